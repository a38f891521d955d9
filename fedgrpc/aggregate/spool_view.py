"""Reading a round's spooled updates back, one block of coordinates at a time.

The read side of the disk spool (`spool` writes): the `HeldSpool` an
Aggregator gets. Row i of every block is update i, in commit order, so the
weights line up with the rows. Reads go straight from the files into the
caller's n x b buffer (`readinto`, no intermediate copy).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedgrpc.aggregate.stages import F32Array, F64Array, Holding
from fedgrpc.errors import InvalidUpdateError

ITEM_BYTES = 4
"""Bytes per spooled value (float32)."""


class SpooledUpdates:
    """A `HeldSpool` over a `SpoolAccumulator`'s committed files."""

    def __init__(
        self,
        files: list[tuple[Path, float]],
        num_coordinates: int,
        require_open: Callable[[], None],
        squared_norms: list[float] | None = None,
    ) -> None:
        """View committed (file, weight) pairs; no copy, reads go to the files.

        `require_open` raises once the spool that owns the files discarded
        them. `squared_norms`, if given, holds ‖uᵢ‖² per file, summed as the
        spool wrote them.
        """
        self._files = files
        self._num_coordinates = num_coordinates
        self._require_open = require_open
        self._squared_norms = squared_norms

    @property
    def holding(self) -> Holding:
        """`every_update`."""
        return "every_update"

    @property
    def count(self) -> int:
        """Updates committed."""
        return len(self._files)

    @property
    def total_weight(self) -> float:
        """Σ wᵢ, summed exactly (math.fsum) so the order of commits cannot matter."""
        return math.fsum(weight for _, weight in self._files)

    @property
    def num_coordinates(self) -> int:
        """d, the length of every update."""
        return self._num_coordinates

    def weights(self) -> F64Array:
        """wᵢ per committed update, in commit order (the rows of `read_block`)."""
        return np.array([weight for _, weight in self._files], dtype=np.float64)

    def known_squared_norms(self) -> F64Array | None:
        """‖uᵢ‖² per update, as summed while the spool wrote them (or None)."""
        if self._squared_norms is None:
            return None
        return np.array(self._squared_norms, dtype=np.float64)

    def read_block(self, start: int, out: F32Array) -> None:
        """Fill row i of `out` (n x b) with uᵢ[start : start + b].

        Each file is opened for its read only, so at most one descriptor is
        open however many clients the round has (a round of 1,000 clients
        would otherwise meet the usual limit of 1,024 open files).

        Raises:
            InvalidUpdateError: `out` has the wrong shape or dtype, or the
                block leaves [0, d).
            WrongRoundError: the spool was discarded.
        """
        self._require_open()
        n, width = len(self._files), (out.shape[1] if out.ndim == 2 else -1)
        if out.dtype != np.float32 or out.shape[0] != n or not out.flags.c_contiguous:
            raise InvalidUpdateError(
                f"the block buffer must be a C-contiguous float32 ({n}, b) array, "
                f"got {out.dtype} {out.shape}"
            )
        if start < 0 or width < 0 or start + width > self.num_coordinates:
            raise InvalidUpdateError(
                f"block [{start}, {start + width}) is outside the "
                f"{self.num_coordinates}-long updates"
            )
        for row, (path, _) in enumerate(self._files):
            with path.open("rb", buffering=0) as handle:
                handle.seek(start * ITEM_BYTES)
                got = handle.readinto(memoryview(out[row]).cast("B"))
            if got != width * ITEM_BYTES:
                raise OSError(f"spool file {path} is shorter than its update")
