"""The coordinator's allowed client keys: which identities may Join.

`allowed_client_keys` names a file or a directory:

* a directory: every `*.pub` file in it (what `fedgrpc keygen` writes), one
  PEM public key each; other files are ignored, so keys can be added by
  copying `.pub` files in;
* a file: any number of PEM public keys (`-----BEGIN PUBLIC KEY-----`
  blocks) and/or fingerprints, one per line (the 64 hex characters
  `fedgrpc keygen` prints); `#` starts a comment.

A fingerprint is enough to allow a key: Join still makes the client present
the whole key and prove it holds the private half, and the coordinator
checks that the key hashes to an allowed fingerprint. The list is read once
at startup; restart the coordinator to change it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from fedgrpc.crypto.files import PUBLIC_KEY_SUFFIX, load_public_key, read_file
from fedgrpc.crypto.keys import PublicKey
from fedgrpc.errors import ConfigError, IdentityFileError, InvalidKeyError

_PEM_BLOCK = re.compile(
    rb"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", re.DOTALL
)
_FINGERPRINT = re.compile(r"[0-9a-fA-F]{64}")


class AllowedKeys:
    """A set of allowed key fingerprints (lowercase hex SHA-256 of raw keys)."""

    def __init__(self, fingerprints: Iterable[str], source: str) -> None:
        self.fingerprints = frozenset(f.lower() for f in fingerprints)
        self.source = source
        """Where the list came from, for log lines and refusals."""

    def __contains__(self, key: PublicKey) -> bool:
        return key.fingerprint in self.fingerprints

    def __len__(self) -> int:
        return len(self.fingerprints)

    @classmethod
    def from_path(cls, path: str | Path) -> AllowedKeys:
        """Read a file or directory of allowed keys (see the module docstring).

        Raises:
            ConfigError: the path is missing or unreadable, a key in it is
                not a PEM public key fedgrpc can verify with, a line is
                neither a key nor a fingerprint, or it lists no key at all.
                The message names the file (and line).
        """
        base = Path(path)
        try:
            if base.is_dir():
                found = [
                    _pem_key(p) for p in sorted(base.glob(f"*{PUBLIC_KEY_SUFFIX}"))
                ]
            else:
                found = _keys_in_file(base)
        except (IdentityFileError, InvalidKeyError) as exc:
            raise ConfigError(f"allowed_client_keys={str(path)!r}: {exc}") from exc
        if not found:
            raise ConfigError(
                f"allowed_client_keys={str(path)!r} lists no key: add `fedgrpc "
                f"keygen` .pub files or their fingerprints, or use open_enrollment"
            )
        return cls(found, str(path))


def _pem_key(path: Path) -> str:
    return load_public_key(path).fingerprint


def _keys_in_file(path: Path) -> list[str]:
    data = read_file(path, "allowed keys file")
    found = [
        PublicKey.from_pem(block).fingerprint for block in _PEM_BLOCK.findall(data)
    ]
    # Blanked out line for line, so reported line numbers stay the file's own.
    rest = _PEM_BLOCK.sub(lambda m: b"\n" * m.group().count(b"\n"), data)
    for number, line in enumerate(rest.decode(errors="replace").splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if not _FINGERPRINT.fullmatch(entry):
            raise InvalidKeyError(
                f"line {number} ({entry[:20]!r}...) is neither a PEM public key nor "
                "a 64-hex-character key fingerprint"
            )
        found.append(entry)
    return found
