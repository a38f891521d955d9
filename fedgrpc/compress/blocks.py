"""What a codec hands back: one block's payload bytes and the values it stands for.

A *block* is a contiguous float32 slice of a flat update vector; the wire
sends one block per message as (offset, count, payload). Decoding yields
either every value of the block (`DenseValues`) or a few of them at
block-relative positions (`SparseValues`); both know how to add themselves
into a float32 sum, which is all the coordinator and the error-feedback
residual ever do with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from fedgrpc.errors import InvalidUpdateError

F32Array: TypeAlias = npt.NDArray[np.float32]
I64Array: TypeAlias = npt.NDArray[np.int64]

MAX_BLOCK_COORDINATES = (1 << 31) - 1
"""Largest `count` a decoder accepts. Keeps every index and running sum of
gaps inside int64 with room to spare (k * count < 2**62)."""


@dataclass(frozen=True, slots=True)
class DenseValues:
    """All `count` values of a block, in order (float32, possibly read-only)."""

    values: F32Array

    @property
    def extent(self) -> int:
        """Coordinates from the block's start that `add_into` touches."""
        return int(self.values.size)

    def add_into(self, target: F32Array, weight: float = 1.0) -> None:
        """Add weight * values into `target` (the block's slice), in place."""
        if weight == 1.0:
            np.add(target, self.values, out=target)
        elif weight == -1.0:
            np.subtract(target, self.values, out=target)
        else:
            target += self.values * np.float32(weight)


@dataclass(frozen=True, slots=True)
class SparseValues:
    """Values at block-relative `indices` (int64, strictly increasing); the rest are 0.

    Because the indices are unique, a plain fancy-index update is exact
    (no `np.add.at` needed) and, on one cache-resident block, fast.
    """

    indices: I64Array
    values: F32Array

    @property
    def extent(self) -> int:
        """Coordinates from the block's start that `add_into` touches."""
        return int(self.indices[-1]) + 1 if self.indices.size else 0

    def add_into(self, target: F32Array, weight: float = 1.0) -> None:
        """Add weight * values at `indices` of `target` (the block's slice)."""
        if weight == 1.0:
            target[self.indices] += self.values
        elif weight == -1.0:
            target[self.indices] -= self.values
        else:
            target[self.indices] += self.values * np.float32(weight)


DecodedBlock: TypeAlias = DenseValues | SparseValues
"""A decoded block: dense or sparse float32 values."""


@dataclass(frozen=True, slots=True)
class EncodedBlock:
    """One block's wire payload, and exactly what `decode(payload)` will yield.

    The client subtracts `sent` from its error-feedback residual, so the
    rounding and everything top-k left out are carried to the next round.
    """

    payload: bytes
    sent: DecodedBlock


def check_count(count: int) -> None:
    """Reject a block length no encoder would produce, before allocating by it.

    Raises:
        InvalidUpdateError: `count` is negative or above MAX_BLOCK_COORDINATES.
    """
    if not 0 <= count <= MAX_BLOCK_COORDINATES:
        raise InvalidUpdateError(
            f"block count {count} is out of range: expected 0..{MAX_BLOCK_COORDINATES}"
        )


def check_block(block: F32Array) -> None:
    """Encoders take 1-D float32 arrays only; anything else is a caller bug.

    Raises:
        ValueError: wrong dtype or shape.
    """
    if block.dtype != np.float32 or block.ndim != 1:
        raise ValueError(
            f"a block must be a 1-D float32 array, got {block.dtype} {block.shape}"
        )


def check_finite(values: F32Array, what: str) -> None:
    """Raise if any value is NaN or ±Inf (min and max propagate both).

    Two reductions and no temporary array: cheaper than `isfinite().all()`
    on large blocks, and the same on small ones.

    Raises:
        InvalidUpdateError: naming `what` ("decoded values", "block", ...).
    """
    if values.size and not (np.isfinite(values.min()) and np.isfinite(values.max())):
        raise InvalidUpdateError(f"{what} contain NaN or Inf: expected finite values")
