"""One update's values while it streams in: held apart from the round's sum.

`staged.StagedSum` keeps each update in flight in one of these and folds
it into the sum only when the update commits, so an update that breaks
half-way is dropped whole and the sum never saw it. Three kinds:

- `DenseStage` in memory: a d-long float32 buffer holding wᵢ·uᵢ, written
  chunk by chunk in order (the wire delivers dense chunks contiguously);
  at commit it is added into the sum, or *becomes* the sum if it is the
  round's first commit (zero copies);
- `DenseStage` on disk: the same values in an anonymous temporary file
  (unlinked at creation, so a crash leaves nothing behind), used once the
  in-memory stages reach `staging_memory_mb`; folded back in 4 MiB blocks,
  or, in a lean round (`disk_sum`), its file *becomes* the round's sum;
- `BlockStage`: a coded update's decoded blocks as they came (top-k: its
  indices and values, k x 12 bytes, not d x 4), replayed into the sum.

Each stage range-checks every write against [0, d) and takes at most one
model's worth of coordinates, so a hostile client can neither write past
its own stage nor grow it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from fedgrpc.aggregate.buffers import BufferPool
from fedgrpc.aggregate.spill_io import read_exact, write_all
from fedgrpc.aggregate.stages import AddableBlock, F32Array
from fedgrpc.errors import InvalidUpdateError, TooLargeError
from fedgrpc.log import get_logger

log = get_logger(__name__)

FOLD_BLOCK_COORDINATES = 1 << 20
"""Coordinates read back per block when folding a spilled stage (4 MiB)."""


def _too_many(written: int, limit: int) -> TooLargeError:
    return TooLargeError(
        f"an update sent {written} coordinates, more than the model's "
        f"{limit}; it is refused"
    )


class DenseStage:
    """wᵢ·uᵢ of one dense update, in a pooled buffer or a temporary file."""

    def __init__(
        self, num_coordinates: int, pool: BufferPool, spill_dir: Path | None
    ) -> None:
        """In memory from `pool`, or on disk in `spill_dir` (None: not spilled).

        Raises:
            TooLargeError: the temporary file could not be created.
        """
        self.num_coordinates = num_coordinates
        self.next_offset = 0
        self._pool = pool
        self._tensor: torch.Tensor | None = None
        self._fd: int | None = None
        if spill_dir is None:
            self._tensor = pool.take(num_coordinates)
            return
        try:
            fd, path = tempfile.mkstemp(prefix="stage-", dir=spill_dir)
        except OSError as exc:
            # The client reads this message: the operator's path goes to the log.
            log.error("stage_spill_failed", dir=str(spill_dir), error=exc.strerror)
            raise TooLargeError(
                f"cannot stage an update on disk ({exc.strerror}); "
                "raise staging_memory_mb or free space in spool_dir"
            ) from exc
        os.unlink(path)  # only the descriptor names it: a crash leaves nothing
        self._fd = fd

    @property
    def in_memory_bytes(self) -> int:
        """RAM this stage holds: d x 4 in memory, 0 on disk."""
        return self.num_coordinates * 4 if self._tensor is not None else 0

    @property
    def complete(self) -> bool:
        """Every coordinate was written."""
        return self.next_offset == self.num_coordinates

    def write(
        self, offset: int, values: F32Array, weight: float, scratch: F32Array
    ) -> None:
        """stage[offset : offset + n] = weight x values (the next chunk, in order).

        The product is the one `StreamingSum.add_chunk` adds, fl(w x v), so
        a sum built from stages has the same bits per term.

        Raises:
            InvalidUpdateError: not the next coordinates of this update.
            TooLargeError: past the end of the model.
        """
        end = offset + values.size
        if end > self.num_coordinates:
            raise _too_many(end, self.num_coordinates)
        if offset != self.next_offset:
            raise InvalidUpdateError(
                f"dense values for coordinate {offset} arrived where "
                f"{self.next_offset} was next; send chunks in order"
            )
        if self._tensor is not None:
            target = self._tensor.numpy()[offset:end]
            if weight == 1.0:
                np.copyto(target, values)
            else:
                np.multiply(values, np.float32(weight), out=target)
        else:
            product = values
            if weight != 1.0:
                product = scratch[: values.size]
                np.multiply(values, np.float32(weight), out=product)
            assert self._fd is not None  # in RAM or on disk until released
            write_all(self._fd, product, offset)
        self.next_offset = end

    def take_tensor(self) -> torch.Tensor | None:
        """Hand over the in-memory buffer (it becomes the round's sum); None on disk."""
        tensor, self._tensor = self._tensor, None
        return tensor

    def take_file(self) -> int | None:
        """Hand over the file's descriptor (it becomes a sum on disk); None in RAM."""
        fd, self._fd = self._fd, None
        return fd

    def read_window(self, start: int, out: F32Array) -> None:
        """Fill `out` with stage[start : start + len(out)], from RAM or the file."""
        if self._tensor is not None:
            np.copyto(out, self._tensor.numpy()[start : start + out.size])
            return
        assert self._fd is not None
        read_exact(self._fd, out, start)

    def fold_into(self, total: F32Array) -> None:
        """Total += stage (the weight was applied at write time)."""
        if self._tensor is not None:
            np.add(total, self._tensor.numpy(), out=total)
            return
        block = np.empty(min(FOLD_BLOCK_COORDINATES, len(total)), dtype=np.float32)
        for start in range(0, len(total), len(block)):
            part = block[: min(len(block), len(total) - start)]
            self.read_window(start, part)
            segment = total[start : start + part.size]
            np.add(segment, part, out=segment)

    def release(self) -> None:
        """Give the buffer back to the pool or close the file (idempotent)."""
        tensor, self._tensor = self._tensor, None
        if tensor is not None:
            self._pool.give(tensor)
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class BlockStage:
    """A coded update's decoded blocks, replayed into the sum at commit."""

    def __init__(self, num_coordinates: int) -> None:
        self.num_coordinates = num_coordinates
        self.blocks: list[tuple[int, AddableBlock, float]] = []
        self.written = 0
        self.in_memory_bytes = 0

    @property
    def complete(self) -> bool:
        """Coded updates are checked for completeness by the wire; always True."""
        return True

    def add(self, offset: int, block: AddableBlock, weight: float) -> None:
        """Keep `block` (first coordinate `offset`, weight `weight`) for the commit.

        Raises:
            InvalidUpdateError: the block reaches outside [0, d).
            TooLargeError: more than one model's worth of coordinates.
        """
        extent = block.extent
        if offset < 0 or offset + extent > self.num_coordinates:
            raise InvalidUpdateError(
                f"block [{offset}, {offset + extent}) is outside the "
                f"{self.num_coordinates}-long sum"
            )
        written = self.written + extent
        if written > self.num_coordinates:
            raise _too_many(written, self.num_coordinates)
        self.blocks.append((offset, block, weight))
        self.written = written
        self.in_memory_bytes += _block_bytes(block)

    def fold_into(self, total: F32Array) -> None:
        """Total += weight x each block, in arrival order (as the streaming sum did)."""
        for offset, block, weight in self.blocks:
            block.add_into(total[offset : offset + block.extent], weight)

    def release(self) -> None:
        """Drop the blocks."""
        self.blocks = []
        self.in_memory_bytes = 0


def _block_bytes(block: AddableBlock) -> int:
    """Bytes a decoded block holds (its arrays), for the staging budget."""
    return sum(
        int(getattr(getattr(block, name, None), "nbytes", 0))
        for name in ("values", "indices")
    )
