"""Random-k with a seed for positions: issue 18's index-free candidate (bench only).

At top-k 3 % int2 ~7 of the ~9.2 payload bits a value are its position.
Random-k sends no positions at all: each block carries an 8-byte seed from
which the receiver draws the same k positions, so the bytes of top-k 3 %
buy ~4x the coordinates (12.5 % at int2). Error feedback keeps what was not
sent (Stich et al. 2018, "Sparsified SGD with memory", analyse rand-k and
top-k with memory alike); each worker draws its own positions, so four
workers cover ~40 % of the coordinates a round. Whether the lost choice
(random, not largest) costs more than the gained density buys is the
question `_convergence_h50` measures.

Payload, per block of `count` coordinates, k = ceil(density * count):

    uint64 LE  seed (positions = sorted k of range(count) without
               replacement, numpy PCG64 `Generator.choice` seeded with it)
    values     k values in the codec's format, in position order
"""

from __future__ import annotations

import math

import numpy as np
from _run_topk import fitting_block

from fedgrpc.compress.blocks import (
    EncodedBlock,
    F32Array,
    I64Array,
    SparseValues,
    check_block,
    check_count,
)
from fedgrpc.compress.quantize import decode_values, encode_values, value_bytes
from fedgrpc.domain.codecs import ValueFormat
from fedgrpc.errors import ConfigError, InvalidUpdateError

SEED_BYTES = 8


def seeded_positions(seed: int, count: int, k: int) -> I64Array:
    """The sorted k positions of `count` that `seed` stands for."""
    chosen = np.random.default_rng(seed).choice(count, size=k, replace=False)
    positions: I64Array = np.sort(chosen).astype(np.int64)
    return positions


class RandKCodec:
    """A `BlockCodec` sending k seeded random coordinates of every block.

    `encode` is not thread-safe (its rng); `decode` is.
    """

    def __init__(
        self,
        density: float,
        values: ValueFormat,
        rng: np.random.Generator,
        positions: np.random.Generator | None = None,
    ) -> None:
        """`rng` rounds values; `positions` draws the seeds (default: `rng`).

        Workers given equally seeded `positions` generators draw the same
        seed for every block, as long as they encode the same blocks in the
        same order: one shared index set a round, as secure aggregation
        needs, at no byte cost.
        """
        if not 0 < density <= 1:
            raise ConfigError(f"density={density} is invalid: expected (0, 1]")
        self.density = density
        self.values: ValueFormat = values
        self._rng = rng
        self._positions = positions if positions is not None else rng

    def k_for(self, count: int) -> int:
        """Values a block of `count` sends: ceil(density * count), >= 1."""
        return min(count, max(1, math.ceil(self.density * count - 1e-9)))

    def block_coordinates(self, chunk_bytes: int) -> int:
        """TOPK_BLOCK_COORDINATES, halved until a payload fits."""
        return fitting_block(self.estimated_bytes, chunk_bytes)

    def encode(self, block: F32Array) -> EncodedBlock:
        """Draw a seed, send the values at its positions.

        Raises:
            InvalidUpdateError: `block` holds NaN or Inf.
        """
        check_block(block)
        if block.size and not np.isfinite(np.sum(block, dtype=np.float64)):
            raise InvalidUpdateError("block values contain NaN or Inf: expected finite")
        seed = int(self._positions.integers(0, 1 << 63))
        positions = seeded_positions(seed, block.size, self.k_for(block.size))
        payload = seed.to_bytes(SEED_BYTES, "little") + encode_values(
            np.ascontiguousarray(block[positions]), self.values, self._rng
        )
        return EncodedBlock(payload, self.decode(payload, block.size))

    def decode(self, payload: bytes | memoryview, count: int) -> SparseValues:
        """The sent values and the positions their seed stands for.

        Raises:
            InvalidUpdateError: a payload of the wrong length or bad values.
        """
        check_count(count)
        view = memoryview(payload).cast("B")
        k = self.k_for(count)
        expected = SEED_BYTES + value_bytes(self.values, k)
        if len(view) != expected:
            raise InvalidUpdateError(
                f"random-k payload has {len(view)} bytes: expected {expected} for "
                f"{k} {self.values} values of {count} coordinates"
            )
        seed = int.from_bytes(view[:SEED_BYTES], "little")
        values = decode_values(view[SEED_BYTES:], self.values, k)
        return SparseValues(seeded_positions(seed, count, k), values)

    def estimated_bytes(self, num_coordinates: int) -> int:
        """Payload bytes of one block (exact)."""
        return SEED_BYTES + value_bytes(self.values, self.k_for(num_coordinates))
