"""A per-client disk spool: every update of a round, one float32 file each.

The Accumulator for rules that need every client's update (median, trimmed
mean, and the robust-aggregation issue's Krum and friends). The streaming sum
keeps O(model) memory by folding updates together; these rules cannot, so
each update goes to its own file of d float32 values (np.memmap), and the
Aggregator later reads all n files one block of coordinates at a time
(`HeldSpool.read_block`): RAM is O(chunk) while updates stream in and
O(n x block) while aggregating, never O(n x d). The page cache may hold the
files, but those pages are clean, file-backed and the kernel's to evict.

Unlike the streaming sum, a push that fails half-way is simply dropped: its
file is deleted and nothing of it reached the other updates, so the round
goes on (`voids_on_abandon` is False).

A hostile client is bounded:
- every write is range-checked against [0, d), and one update may write at
  most d coordinates in total (`TooLargeError` past that), so it can neither
  grow its file nor touch another client's;
- each file's d x 4 bytes are reserved with `posix_fallocate` when the
  client's first chunk arrives, so a full disk is a clean `TooLargeError`
  for that client, never a SIGBUS inside a memmap write;
- at most `max_updates` files exist at once, so disk use is bounded by
  (clients in the round) x model size: max_updates x d x 4 bytes;
- file names are a counter (`u<n>.f32`), never anything the client sent.

Files are written through memmap and never fsync'ed: the spool is scratch
that dies with the run (the run directory's lock lets the next start-up
remove it, see `spool_dir`). Not thread-safe.
"""

from __future__ import annotations

import math
import mmap
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedgrpc.aggregate.spool_view import ITEM_BYTES, SpooledUpdates
from fedgrpc.aggregate.stages import (
    AddableBlock,
    F32Array,
    Holding,
    UpdateKey,
    check_not_committed,
)
from fedgrpc.errors import (
    ConfigError,
    InvalidUpdateError,
    TooLargeError,
    WrongRoundError,
)
from fedgrpc.log import get_logger

log = get_logger(__name__)


@dataclass(slots=True)
class _Streaming:
    """An update still arriving: its file, mapped for writing."""

    path: Path
    values: np.memmap
    written: int = 0
    squared_norm: float = 0.0
    """Σ of the written values squared: chunks tile the update exactly
    (`domain.chunks.ChunkOrder`), so this is ‖u‖² at commit."""


class SpoolAccumulator:
    """One round's updates, each in its own file under `directory`."""

    def __init__(self, directory: Path, num_coordinates: int, max_updates: int) -> None:
        """Create the round's directory (it must not exist yet).

        Raises:
            ConfigError: bad sizes, or `directory` exists already.
        """
        if num_coordinates <= 0 or max_updates <= 0:
            raise ConfigError(
                f"a spool needs num_coordinates > 0 and max_updates > 0, got "
                f"{num_coordinates} and {max_updates}"
            )
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError as exc:
            raise ConfigError(f"the spool round {directory} exists already") from exc
        self.directory = directory
        self.num_coordinates = num_coordinates
        self.max_updates = max_updates
        self._streaming: dict[UpdateKey, _Streaming] = {}
        self._committed: list[tuple[Path, float]] = []
        self._squared_norms: list[float] = []
        self._committed_keys: set[UpdateKey] = set()
        self._next_file = 0
        self._discarded = False

    @property
    def holding(self) -> Holding:
        """Every update: `every_update`."""
        return "every_update"

    @property
    def voids_on_abandon(self) -> bool:
        """False: an abandoned update's file is deleted, the rest are untouched."""
        return False

    @property
    def count(self) -> int:
        """Updates committed."""
        return len(self._committed)

    @property
    def total_weight(self) -> float:
        """Σ wᵢ over the committed updates."""
        return math.fsum(weight for _, weight in self._committed)

    def add_values(
        self,
        key: UpdateKey,
        offset: int,
        values: F32Array,
        weight: float,
        scratch: F32Array,
    ) -> None:
        """uₖ[offset : offset + len(values)] += values, in `key`'s file.

        `weight` and `scratch` are unused: the spool keeps uₖ unweighted and
        takes the weight at commit.

        Raises:
            InvalidUpdateError: not 1-D float32, or outside [0, d).
            TooLargeError: more than d coordinates for `key`, too many
                updates, or no disk space for one more.
            WrongRoundError: the spool was discarded.
        """
        if values.dtype != np.float32 or values.ndim != 1:
            raise InvalidUpdateError(
                f"chunk values must be 1-D float32: {values.dtype}"
            )
        target = self._target(key, offset, values.size)
        np.add(target, values, out=target)
        self._count_norm(key, target)
        self._release(key, offset, offset + values.size)

    def add_block(
        self, key: UpdateKey, offset: int, block: AddableBlock, weight: float
    ) -> None:
        """Add a decoded codec block (unweighted) into `key`'s file.

        Raises:
            InvalidUpdateError, TooLargeError, WrongRoundError: as `add_values`.
        """
        target = self._target(key, offset, block.extent)
        block.add_into(target, 1.0)
        self._count_norm(key, target)
        self._release(key, offset, offset + block.extent)

    def commit_update(self, key: UpdateKey, weight: float) -> None:
        """Keep `key`'s file as a committed update with weight `weight`.

        Raises:
            InvalidUpdateError: a bad weight, or `key` sent no values.
            WrongRoundError: `key` was committed already, or the spool was
                discarded.
        """
        self._require_open()
        check_not_committed(key, self._committed_keys)
        if not (math.isfinite(weight) and weight > 0):
            raise InvalidUpdateError(f"update weight must be > 0, got {weight}")
        streaming = self._streaming.pop(key, None)
        if streaming is None:
            raise InvalidUpdateError("an update without values cannot be counted")
        # Unmapping is enough: the pages stay in the page cache and the later
        # reads see them; nothing needs to reach the disk (no fsync).
        del streaming.values
        self._committed.append((streaming.path, weight))
        self._squared_norms.append(streaming.squared_norm)
        self._committed_keys.add(key)

    def abandon(self, key: UpdateKey) -> bool:
        """Delete `key`'s half-written file; never voids the round (returns False)."""
        streaming = self._streaming.pop(key, None)
        if streaming is not None:
            del streaming.values
            streaming.path.unlink(missing_ok=True)
            log.debug("spool_update_dropped", path=streaming.path.name)
        return False

    def held(self) -> SpooledUpdates:
        """The committed updates, readable by block (see `HeldSpool`)."""
        self._require_open()
        return SpooledUpdates(
            list(self._committed),
            self.num_coordinates,
            self._require_open,
            list(self._squared_norms),
        )

    def discard(self) -> None:
        """Unmap and delete every file of the round (idempotent)."""
        if self._discarded:
            return
        self._discarded = True
        self._streaming.clear()  # drops the memmaps before their files go
        self._committed.clear()
        self._squared_norms.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- internals -------------------------------------------------------------

    def _target(self, key: UpdateKey, offset: int, size: int) -> F32Array:
        """The writable slice uₖ[offset : offset + size], checked (see module doc)."""
        self._require_open()
        end = offset + size
        if offset < 0 or end > self.num_coordinates:
            raise InvalidUpdateError(
                f"chunk [{offset}, {end}) is outside the {self.num_coordinates}"
                "-long update"
            )
        streaming = self._streaming.get(key)
        if streaming is None:
            check_not_committed(key, self._committed_keys)
            streaming = self._streaming[key] = self._create_file()
        written = streaming.written + size
        if written > self.num_coordinates:
            raise TooLargeError(
                f"an update sent {written} coordinates, more than the model's "
                f"{self.num_coordinates}; it is refused"
            )
        streaming.written = written
        view: F32Array = streaming.values[offset:end]
        return view

    def _count_norm(self, key: UpdateKey, written: F32Array) -> None:
        """Add ‖written‖² to the update's running ‖u‖² (float64 between chunks).

        One BLAS dot per chunk while its pages are hot: ~0.1 ms per MiB,
        spread over the upload, instead of the norm bound's pass over every
        update at the round's close.
        """
        values = np.asarray(written)
        self._streaming[key].squared_norm += float(np.dot(values, values))

    def _release(self, key: UpdateKey, start: int, end: int) -> None:
        """Drop the written pages from this process's mapping (not from the file).

        Pages written through a shared mapping count toward the process's
        RSS until it is unmapped at commit, so n clients streaming at once
        would hold n x d x 4 bytes of RSS. MADV_DONTNEED on a shared file
        mapping only unmaps them: the dirty data stays in the page cache
        (written back by the kernel, evictable once clean) and a later
        access refaults it from there, so nothing is lost.
        """
        streaming = self._streaming.get(key)
        region = getattr(streaming.values, "_mmap", None) if streaming else None
        if region is None or not hasattr(region, "madvise"):
            return  # not Linux-like, or numpy changed: keep the pages mapped
        first = (start * ITEM_BYTES) // mmap.PAGESIZE * mmap.PAGESIZE
        region.madvise(mmap.MADV_DONTNEED, first, end * ITEM_BYTES - first)

    def _create_file(self) -> _Streaming:
        """A new zero-filled d-long float32 file, space reserved, mapped."""
        in_use = len(self._streaming) + len(self._committed)
        if in_use >= self.max_updates:
            raise TooLargeError(
                f"the round already holds {in_use} updates on disk, its limit "
                f"(max_updates={self.max_updates}); this update is refused"
            )
        path = self.directory / f"u{self._next_file}.f32"
        self._next_file += 1
        size = self.num_coordinates * ITEM_BYTES
        # O_EXCL: never follow or reuse a file someone else put there.
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            with os.fdopen(fd, "r+b", closefd=False) as handle:
                values = np.memmap(
                    handle, dtype=np.float32, mode="r+", shape=(self.num_coordinates,)
                )
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise TooLargeError(
                f"no room to spool one more update of {size} bytes in "
                f"{self.directory} ({exc.strerror}); free disk space or set a "
                "larger spool_dir"
            ) from exc
        os.close(fd)  # the mapping keeps its own reference to the file
        return _Streaming(path, values)

    def _require_open(self) -> None:
        """Raise WrongRoundError once the spool was discarded."""
        if self._discarded:
            raise WrongRoundError("this round's spool was already discarded")
