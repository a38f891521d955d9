"""Writing and reading key and certificate files safely; key pairs on disk.

A private key must never exist on disk, even for an instant, with a mode
other than 0600, and a half-written key must never replace a good one. So
each file is written to a temporary file in the target directory (created
0600 by `mkstemp`), flushed, given its final mode, and then moved into place
in one step: `os.link` when overwriting is not allowed (it fails if the name
exists, even when two writers race), `os.replace` when it is.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedgrpc.crypto.keys import PrivateKey, PublicKey
from fedgrpc.errors import ConfigError, IdentityFileError, InvalidKeyError

SECRET_MODE = 0o600
"""Private keys: readable and writable by the owner only (as ssh requires)."""
PUBLIC_MODE = 0o644
"""Public keys and certificates: anyone may read them."""
_DIRECTORY_MODE = 0o700
PRIVATE_KEY_SUFFIX = ".key"
PUBLIC_KEY_SUFFIX = ".pub"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class PendingFile:
    """One file to write: where, what, and with which permission bits."""

    path: Path
    data: bytes
    mode: int


def write_files(files: Sequence[PendingFile], *, overwrite: bool = False) -> None:
    """Write every file atomically, or refuse before writing any of them.

    The directories are created (0700) if missing. Without `overwrite`, an
    existing target anywhere in `files` stops the whole write, so a refusal
    never leaves a mix of old and new files behind.

    Raises:
        IdentityFileError: a target exists (and not `overwrite`), or a
            directory cannot be created or written; the message names it.
    """
    if not overwrite:
        existing = [str(f.path) for f in files if f.path.exists()]
        if existing:
            raise IdentityFileError(
                f"refusing to overwrite {', '.join(existing)}; remove them or "
                "pass --force (overwrite=True) to replace them"
            )
    for directory in sorted({f.path.parent for f in files}):
        _make_directory(directory)
    for pending in files:
        _write_atomically(pending, overwrite=overwrite)


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=_DIRECTORY_MODE)
    except FileExistsError as exc:
        raise IdentityFileError(
            f"cannot use {directory} as the output directory: it exists and is "
            "not a directory"
        ) from exc
    except OSError as exc:
        raise IdentityFileError(
            f"cannot create directory {directory}: {exc.strerror or exc}"
        ) from exc


def _write_atomically(pending: PendingFile, *, overwrite: bool) -> None:
    path = pending.path
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise IdentityFileError(
            f"cannot write {path}: {exc.strerror or exc}; is {path.parent} writable?"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pending.data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, pending.mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError as exc:
        raise IdentityFileError(
            f"refusing to overwrite {path}: it appeared while writing"
        ) from exc
    except OSError as exc:
        raise IdentityFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def read_file(path: str | Path, what: str) -> bytes:
    """The bytes of `path`, described as `what` in the error if it cannot be read.

    Raises:
        IdentityFileError: missing, a directory, or not readable.
    """
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise IdentityFileError(
            f"cannot read {what} {path}: {exc.strerror or exc}"
        ) from exc


@dataclass(frozen=True, slots=True)
class KeyPairFiles:
    """Where `save_key_pair` wrote a key pair, and the public key's fingerprint."""

    private_key: Path
    public_key: Path
    fingerprint: str


def save_key_pair(
    key: PrivateKey,
    directory: str | Path,
    name: str = "identity",
    *,
    overwrite: bool = False,
) -> KeyPairFiles:
    """Write `NAME.key` (0600) and `NAME.pub` (0644) into `directory`.

    Both files are written atomically, and neither is written if either
    exists (unless `overwrite`). The directory is created 0700 if missing.

    Raises:
        IdentityFileError: `name` is not a plain file name, a file exists, or
            the directory is not writable.
    """
    if not _NAME.fullmatch(name):
        raise IdentityFileError(
            f"key name {name!r} is invalid: expected 1-64 letters, digits, '.', "
            "'_' or '-', not starting with '.', '_' or '-'"
        )
    base = Path(directory)
    files = KeyPairFiles(
        base / f"{name}{PRIVATE_KEY_SUFFIX}",
        base / f"{name}{PUBLIC_KEY_SUFFIX}",
        key.public_key.fingerprint,
    )
    write_files(
        [
            PendingFile(files.private_key, key.to_pem(), SECRET_MODE),
            PendingFile(files.public_key, key.public_key.to_pem(), PUBLIC_MODE),
        ],
        overwrite=overwrite,
    )
    return files


def load_private_key(path: str | Path) -> PrivateKey:
    """Read a PKCS#8 PEM private key file.

    Raises:
        IdentityFileError: unreadable, or not a key fedgrpc can sign with.
    """
    data = read_file(path, "private key")
    try:
        return PrivateKey.from_pem(data)
    except InvalidKeyError as exc:
        raise IdentityFileError(f"{path}: {exc}") from exc


def load_identity_option(path: str, option: str = "identity_key") -> PrivateKey:
    """The private key a config option names, errors phrased for that option.

    Raises:
        ConfigError: naming `option`; the file is unreadable or not a key.
    """
    try:
        return load_private_key(path)
    except IdentityFileError as exc:
        raise ConfigError(f"{option}={path!r}: {exc}") from exc


def load_public_key(path: str | Path) -> PublicKey:
    """Read a SubjectPublicKeyInfo PEM public key file.

    Raises:
        IdentityFileError: unreadable, or not a key fedgrpc can verify with.
    """
    data = read_file(path, "public key")
    try:
        return PublicKey.from_pem(data)
    except InvalidKeyError as exc:
        raise IdentityFileError(f"{path}: {exc}") from exc
