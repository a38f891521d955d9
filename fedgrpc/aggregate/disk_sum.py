"""A lean round's sum in a file: folded, normed and read 4 MiB at a time.

With `staging_memory_mb = 0` every dense update is staged in an unlinked
file (`stage`), and with `outer_state_on_disk` the outer optimizer's state
is read and written 4 MiB at a time (`optim.offload`). What was left in
RAM was the round's sum: the first committed stage was read back into a
model-sized buffer and the others added into it. Here the sum stays on
disk instead: the first committed stage's file *becomes* it (no copy), and
each later commit is folded in block by block:

    for each block [lo, hi) of 2^20 coordinates (4 MiB):
        sum[lo:hi] <- canon(sum[lo:hi]) + stage[lo:hi]      (pread, add, pwrite)

The outer step then reads the mean back the same way (`mean_block`), so
the coordinator's RAM at the peak is the master weights and a few blocks
(README "Coordinator memory").

Bit for bit what the in-RAM sum holds: that sum starts as zeros, so its
first term is fl(0 + u₁), which is u₁ except that -0.0 becomes +0.0, and a
sum of float32 terms started at +0.0 is never -0.0 (round-to-nearest gives
x + (-x) = +0.0). `canon(x) = x + 0.0` (exact: it only turns -0.0 into
+0.0) is therefore applied to every block read from the file, which makes
the adopted first stage equal fl(0 + u₁) and leaves later sums unchanged.
Each fold and each division is elementwise, so doing it per block gives
the same bits as over the whole vector.

Not thread-safe: the staged sum folds on the event loop and the apply
thread reads only once ingest has stopped.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from fedgrpc.aggregate.spill_io import ITEM_BYTES, read_exact, write_all
from fedgrpc.aggregate.stage import FOLD_BLOCK_COORDINATES, BlockStage, DenseStage
from fedgrpc.aggregate.stages import F32Array
from fedgrpc.errors import TooLargeError, WrongRoundError

_ZERO = np.float32(0.0)


class DiskSum:
    """Σ wᵢ·uᵢ over a round's committed updates, in an unlinked float32 file."""

    def __init__(
        self, num_coordinates: int, spill_dir: Path, fd: int | None = None
    ) -> None:
        """Adopt `fd` (a complete dense stage's file) or start from zeros.

        A fresh file has its d x 4 bytes reserved (`posix_fallocate`), so
        folding into it later cannot meet a full disk half-way (an adopted
        stage's bytes were all written already).

        Raises:
            TooLargeError: the file cannot be created or reserved.
        """
        self.num_coordinates = num_coordinates
        self._fd: int | None = (
            fd if fd is not None else _zero_file(num_coordinates, spill_dir)
        )

    def fold(self, stage: DenseStage | BlockStage) -> None:
        """Sum += stage (the weight was applied when the stage was written).

        A dense stage block by block; a coded one block by block as its
        decoded blocks came, in arrival order, as the in-RAM sum adds them.
        """
        fd = self._require_fd()
        if isinstance(stage, BlockStage):
            for offset, block, weight in stage.blocks:
                window = np.empty(block.extent, dtype=np.float32)
                self.read(offset, window)
                block.add_into(window, weight)
                write_all(fd, window, offset)
            return
        width = min(FOLD_BLOCK_COORDINATES, self.num_coordinates)
        total, part = (np.empty(width, dtype=np.float32) for _ in range(2))
        for start in range(0, self.num_coordinates, width):
            n = min(width, self.num_coordinates - start)
            self.read(start, total[:n])
            stage.read_window(start, part[:n])
            np.add(total[:n], part[:n], out=total[:n])
            write_all(fd, total[:n], start)

    def read(self, start: int, out: F32Array) -> None:
        """Fill `out` with canon(sum[start : start + len(out)]) (see above)."""
        read_exact(self._require_fd(), out, start)
        np.add(out, _ZERO, out=out)

    def mean_block(self, lo: int, hi: int, total_weight: float) -> torch.Tensor:
        """sum[lo:hi] / Σw as a fresh float32 tensor (`WeightedMean`'s division).

        numpy's divide by float32(Σw) is the op `torch.div(sum, Σw)` runs
        (torch casts the scalar to the tensor's float32; IEEE division is
        correctly rounded), so the bits are the same (tests pin it against
        `WeightedMean`). torch.div itself would pay its thread pool's
        hand-off on every 4 MiB block: 10+ ms a call on a loaded 2-core
        machine, against 0.3 ms here.
        """
        block = np.empty(hi - lo, dtype=np.float32)
        self.read(lo, block)
        np.divide(block, np.float32(total_weight), out=block)
        return torch.from_numpy(block)

    def mean_norm(self, total_weight: float) -> float:
        """‖sum / Σw‖₂, block by block (squares summed in float64).

        NaN or Inf if any coordinate is (so it stands in for the outer
        step's finiteness check). Not the bits of `torch.linalg.vector_norm`
        over the whole mean, which sums float32 squares and is off by
        ~6e-4 (relative) at 10.5M coordinates; numpy's pairwise sum of the
        float64 squares is exact to ~1e-15. (np.dot on float64 would hand
        each block to BLAS threads: 10x slower on a loaded machine.)
        """
        squares = 0.0
        width = min(FOLD_BLOCK_COORDINATES, self.num_coordinates)
        wide = np.empty(width, dtype=np.float64)  # reused: no page faults per block
        for lo in range(0, self.num_coordinates, width):
            hi = min(self.num_coordinates, lo + width)
            part = wide[: hi - lo]
            np.copyto(part, self.mean_block(lo, hi, total_weight).numpy())
            np.square(part, out=part)
            squares += float(part.sum())
        return math.sqrt(squares) if math.isfinite(squares) else squares

    def read_all(self, out: torch.Tensor) -> torch.Tensor:
        """`out` <- the whole sum (for a consumer that needs it in RAM after all)."""
        values = out.numpy()
        for lo in range(0, self.num_coordinates, FOLD_BLOCK_COORDINATES):
            self.read(lo, values[lo : lo + FOLD_BLOCK_COORDINATES])
        return out

    def close(self) -> None:
        """Close (and so free) the file; idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _require_fd(self) -> int:
        """The open file, or `WrongRoundError` once the round discarded it."""
        if self._fd is None:
            raise WrongRoundError("this round's sum was already handed over")
        return self._fd


def _zero_file(num_coordinates: int, spill_dir: Path) -> int:
    """An unlinked file of d float32 zeros, its space reserved."""
    try:
        fd, path = tempfile.mkstemp(prefix="sum-", dir=spill_dir)
    except OSError as exc:
        raise TooLargeError(
            f"cannot keep the round's sum on disk ({exc.strerror}); free space "
            "in spool_dir or raise staging_memory_mb"
        ) from exc
    os.unlink(path)  # only the descriptor names it: a crash leaves nothing
    try:
        os.posix_fallocate(fd, 0, num_coordinates * ITEM_BYTES)
    except OSError as exc:
        os.close(fd)
        raise TooLargeError(
            f"no room on disk for the round's sum ({num_coordinates * ITEM_BYTES} "
            f"bytes; {exc.strerror}); free space in spool_dir or raise "
            "staging_memory_mb"
        ) from exc
    return fd
