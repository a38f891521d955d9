"""Checkpoint files: one self-checking file per closed round, written atomically.

A checkpoint directory holds `round-<N>.ckpt` files, N the last closed round
they include. Each file is

    preamble  56 bytes: magic b"FGRPCKPT", format version (u32 LE), flags
              (u32, 0), header length (u64 LE), SHA-256 of the header
    header    UTF-8 JSON: {"state": <what `checkpoint_content` stores>, "tensors":
              [{"name", "count", "offset"}], "body_bytes", "body_sha256"}
    body      the tensors' float32 values, little-endian, back to back

No pickle anywhere: reading a file runs no code from it, and every byte is
covered by a SHA-256, so a torn or flipped file is detected, never loaded.

Writes are atomic: temp file in the same directory, flush + fsync, rename
over the final name, fsync the directory. A crash at any point leaves either
the old set of files or the new one (plus a stale temp file, removed by the
next `CheckpointDir`). Plain Python, no gRPC or asyncio.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedgrpc.coordinator.faults import NO_FAULTS, FaultHooks
from fedgrpc.errors import CheckpointError, ConfigError
from fedgrpc.log import get_logger

log = get_logger(__name__)
MAGIC = b"FGRPCKPT"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sIIQ32s")
MAX_HEADER_BYTES = 256 << 20
"""Largest header accepted: a corrupt length must not allocate gigabytes."""
_NAME = re.compile(r"^round-(\d+)\.ckpt$")
_LOCK_NAME = ".lock"
"""Test-only: `before_replace:N` or `after_replace:N` SIGKILLs this process
while writing round N's checkpoint, to test the crash windows for real."""


@dataclass(frozen=True, slots=True)
class CheckpointFile:
    """A checkpoint as read back: its state dict and float32 tensors."""

    path: Path
    round_id: int
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    """1-D float32 CPU tensors, freshly allocated (safe to adopt)."""


def checkpoint_name(round_id: int) -> str:
    """File name of round `round_id`'s checkpoint."""
    return f"round-{round_id}.ckpt"


class CheckpointDir:
    """One coordinator's checkpoint directory, locked for as long as it is open.

    The lock (`flock` on `.lock`) stops a second coordinator from
    interleaving its checkpoints with ours; the kernel drops it when the
    process dies, so a SIGKILLed coordinator never leaves a stale lock.
    """

    def __init__(
        self, directory: str | Path, keep: int, faults: FaultHooks = NO_FAULTS
    ) -> None:
        self.path = Path(directory)
        self.keep = keep
        self._faults = faults
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock = (self.path / _LOCK_NAME).open("a+b")
        except OSError as exc:
            raise ConfigError(
                f"checkpoint_dir={str(directory)!r} cannot be used: "
                f"{exc.strerror or exc}"
            ) from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock.close()
            raise ConfigError(
                f"checkpoint_dir={str(directory)!r} is in use by another running "
                "coordinator; give each coordinator its own directory"
            ) from exc
        self._remove_stale_temp_files()

    def close(self) -> None:
        """Release the directory lock (idempotent)."""
        if not self._lock.closed:
            self._lock.close()

    def rounds(self) -> list[int]:
        """Round ids of the checkpoint files present, oldest first."""
        return list_rounds(self.path)

    def write(
        self,
        round_id: int,
        state: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
    ) -> Path:
        """Write round `round_id`'s checkpoint atomically, then keep the newest K.

        `tensors` are 1-D float32 CPU tensors; nothing may write them until
        this returns. Blocking (disk I/O, one SHA-256 pass): call it from a
        worker thread. Raises `CheckpointError` (disk full, permissions); the
        previous checkpoints are then untouched.
        """
        final = self.path / checkpoint_name(round_id)
        header = _encode_header(state, tensors)
        temp = ""
        try:
            temp = _write_synced(self.path, final.name, header, tensors)
            self._faults.checkpoint_write("before_replace", round_id)
            os.replace(temp, final)
            temp = ""
            _fsync_directory(self.path)
        except OSError as exc:
            if temp:  # a full disk must not fill up further with every retry
                with contextlib.suppress(OSError):
                    os.unlink(temp)
            raise CheckpointError(f"cannot write {final}: {exc}") from exc
        self._faults.checkpoint_write("after_replace", round_id)
        for old in self.rounds()[: -self.keep]:
            with contextlib.suppress(OSError):  # a leftover is harmless
                (self.path / checkpoint_name(old)).unlink()
        return final

    def load_newest(self) -> CheckpointFile | None:
        """The newest checkpoint that reads back intact, or None if there is none.

        A torn or corrupt file is renamed to `*.corrupt` (kept for a person to
        look at) with a warning, and the next older one is tried.

        Raises:
            CheckpointError: a file in a format this fedgrpc cannot read.
        """
        for round_id in reversed(self.rounds()):
            path = self.path / checkpoint_name(round_id)
            try:
                return read_checkpoint(path)
            except _CorruptError as exc:
                quarantined = path.with_name(path.name + ".corrupt")
                os.replace(path, quarantined)
                log.warning(
                    "checkpoint_corrupt", path=str(path), moved_to=str(quarantined),
                    reason=str(exc),
                )  # fmt: skip
        return None

    def _remove_stale_temp_files(self) -> None:
        """Temp files of writes a crash interrupted (only ours: we hold the lock)."""
        for stale in self.path.glob(".round-*.ckpt.*"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
            log.info("checkpoint_temp_removed", path=str(stale))


class _CorruptError(CheckpointError):
    """The file is torn or damaged: fall back to an older one."""


def read_checkpoint(path: str | Path) -> CheckpointFile:
    """Read and verify one checkpoint file.

    Raises:
        CheckpointError: the file is missing, torn or corrupt (every byte is
            checked against its SHA-256), or in a newer format.
    """
    path = Path(path)
    match = _NAME.match(path.name)
    try:
        with path.open("rb") as src:
            state, layout, body_sha = _read_header(src, path)
            tensors = _read_body(src, path, layout, body_sha)
    except OSError as exc:
        raise _CorruptError(f"cannot read checkpoint {path}: {exc}") from exc
    round_id = int(match.group(1)) if match else int(state.get("round_id", -1))
    return CheckpointFile(path, round_id, state, tensors)


def _encode_header(
    state: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> bytes:
    layout, offset, hasher = [], 0, hashlib.sha256()
    for name, tensor in tensors.items():
        data = _bytes_of(tensor)
        hasher.update(data)  # releases the GIL: the event loop keeps running
        layout.append({"name": name, "count": tensor.numel(), "offset": offset})
        offset += len(data)
    body = {"tensors": layout, "body_bytes": offset, "body_sha256": hasher.hexdigest()}
    header = json.dumps({"state": dict(state), **body}, separators=(",", ":")).encode()
    digest = hashlib.sha256(header).digest()
    return _PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(header), digest) + header


def _read_header(
    src: io.BufferedReader, path: Path
) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    preamble = src.read(_PREAMBLE.size)
    if len(preamble) < _PREAMBLE.size:
        raise _CorruptError(f"{path} is truncated (no complete preamble)")
    magic, version, _flags, length, digest = _PREAMBLE.unpack(preamble)
    if magic != MAGIC:
        raise _CorruptError(f"{path} is not a fedgrpc checkpoint (bad magic)")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}; this fedgrpc reads format "
            f"{FORMAT_VERSION}: run the fedgrpc version that wrote it"
        )
    if length > MAX_HEADER_BYTES:
        raise _CorruptError(f"{path} claims a {length}-byte header (corrupt)")
    header = src.read(length)
    if len(header) < length or hashlib.sha256(header).digest() != digest:
        raise _CorruptError(f"{path}: header is truncated or its SHA-256 differs")
    decoded = json.loads(header)
    return decoded["state"], decoded["tensors"], decoded["body_sha256"]


def _read_body(
    src: io.BufferedReader, path: Path, layout: list[dict[str, Any]], body_sha: str
) -> dict[str, torch.Tensor]:
    tensors, hasher, offset = {}, hashlib.sha256(), 0
    for entry in layout:
        if entry["offset"] != offset:
            raise _CorruptError(f"{path}: tensor {entry['name']} is out of place")
        tensor = torch.empty(int(entry["count"]), dtype=torch.float32)
        view = _bytes_of(tensor)
        if src.readinto(view) != len(view):
            raise _CorruptError(f"{path} is truncated in tensor {entry['name']}")
        hasher.update(view)
        offset += len(view)
        tensors[entry["name"]] = tensor
    if src.read(1) or hasher.hexdigest() != body_sha:
        raise _CorruptError(f"{path}: the body's SHA-256 differs from its header's")
    return tensors


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous float32 CPU tensor, no copy, native (LE) order."""
    if tensor.dtype != torch.float32 or not tensor.is_contiguous():
        raise CheckpointError("checkpoint tensors must be contiguous float32")
    return tensor.detach().cpu().numpy().data.cast("B")


def _write_synced(
    directory: Path, name: str, header: bytes, tensors: Mapping[str, torch.Tensor]
) -> str:
    """A temp file beside `name` holding header and tensors, on disk; its path."""
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(header)
            for tensor in tensors.values():
                out.write(_bytes_of(tensor))
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return temp


def _fsync_directory(path: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_rounds(directory: str | Path) -> list[int]:
    """Round ids of the checkpoint files in `directory`, oldest first.

    Takes no lock: `fedgrpc export` reads a directory a coordinator may be
    writing, which is safe because files only ever appear by rename.
    """
    found = (_NAME.match(p.name) for p in Path(directory).iterdir())
    return sorted(int(m.group(1)) for m in found if m)
