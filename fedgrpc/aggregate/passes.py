"""One pass over a spool: per-client distances, and a centre rebuilt block by block.

The distance-based robust rules (Krum, geometric median, centered clipping,
the norm bound) and the trust scores all need, per client i, a squared
distance ‖uᵢ - c‖² to some centre c of length d. Neither the n x d matrix nor
a second model-sized buffer may be in memory, so each function here walks
the spool once, a block of coordinates at a time (`spool_blocks`), and keeps
only O(n) accumulators between blocks.

The iterative rules go one step further (`recentre`): a new centre that is a
linear combination of the old one and the updates,

    c'[block] = keep · c[block] + Σᵢ coefᵢ · uᵢ[block],

is computed for a block and, while that block is still in memory, the
distances ‖uᵢ - c'‖² of the *next* iteration are accumulated from it. The
centre is rewritten in place in the caller's buffer (block j of c is never
read again once c'[block j] is written), so an iteration costs one read of
the spool and no memory beyond the output buffer and one block.

Squared norms are summed in float64 per block (numpy's pairwise sum, cast
as it goes: no float64 copy of the block) so that d = 10⁸ coordinates do not
lose the small distances in rounding.
"""

from __future__ import annotations

import numpy as np

from fedgrpc.aggregate.blockwise import DEFAULT_BLOCK_BYTES, spool_blocks
from fedgrpc.aggregate.stages import F32Array, F64Array, HeldSpool

GRAM_COLUMNS = 1 << 16
"""Columns per float64 Gram product in `pairwise_squared_distances`."""


def squared_norms(spool: HeldSpool, block_bytes: int = DEFAULT_BLOCK_BYTES) -> F64Array:
    """‖uᵢ‖² per committed update (row order of `read_block`), one pass."""
    total = np.zeros(spool.count, dtype=np.float64)
    for _, block in spool_blocks(spool, block_bytes):
        np.square(block, out=block)
        total += block.sum(axis=1, dtype=np.float64)
    return total


def squared_distances_to(
    spool: HeldSpool, center: F32Array, block_bytes: int = DEFAULT_BLOCK_BYTES
) -> F64Array:
    """‖uᵢ - center‖² per committed update, one pass; `center` is d-long float32."""
    total = np.zeros(spool.count, dtype=np.float64)
    for start, block in spool_blocks(spool, block_bytes):
        np.subtract(block, center[start : start + block.shape[1]], out=block)
        np.square(block, out=block)
        total += block.sum(axis=1, dtype=np.float64)
    return total


def distances_to(
    spool: HeldSpool, aggregate: F32Array, block_bytes: int = DEFAULT_BLOCK_BYTES
) -> F64Array:
    """‖uᵢ - aggregate‖₂ per committed update (for trust scores), one pass."""
    return np.sqrt(squared_distances_to(spool, aggregate, block_bytes))


def recentre(
    spool: HeldSpool,
    center: F32Array,
    keep: float,
    coef: F64Array,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> F64Array:
    """Center ← keep·center + Σᵢ coefᵢ·uᵢ in place; return ‖uᵢ - center‖² after it.

    One pass (see the module docstring). `keep` = 0 ignores the old centre
    (the Weiszfeld step); `coef` all zero keeps it (distances only).
    """
    weights = coef.astype(np.float32)
    moves = bool(np.any(weights)) or keep != 1.0
    total = np.zeros(spool.count, dtype=np.float64)
    mixed: F32Array | None = None
    for start, block in spool_blocks(spool, block_bytes):
        part = center[start : start + block.shape[1]]
        if moves:
            if mixed is None or mixed.size < block.shape[1]:
                mixed = np.empty(block.shape[1], dtype=np.float32)
            combined = mixed[: block.shape[1]]
            np.matmul(weights, block, out=combined)  # Σᵢ coefᵢ·uᵢ[block]
            if keep == 0.0:
                part[...] = combined
            else:
                part *= np.float32(keep)
                part += combined
        np.subtract(block, part, out=block)
        np.square(block, out=block)
        total += block.sum(axis=1, dtype=np.float64)
    return total


def combine(
    spool: HeldSpool,
    coef: F64Array,
    out: F32Array,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> None:
    """Out ← Σᵢ coefᵢ·uᵢ, one pass (a selection's mean, a weighted mean)."""
    weights = coef.astype(np.float32)
    for start, block in spool_blocks(spool, block_bytes):
        np.matmul(weights, block, out=out[start : start + block.shape[1]])


def pairwise_squared_distances(
    spool: HeldSpool, block_bytes: int = DEFAULT_BLOCK_BYTES
) -> F64Array:
    """The n x n matrix ‖uᵢ - uⱼ‖², accumulated block by block, one pass.

    Per block, in float64: centre the rows on their mean (distances do not
    change, the cancellation in ‖a‖² + ‖b‖² - 2a·b does), take the Gram
    matrix G = X·Xᵀ and add Gᵢᵢ + Gⱼⱼ - 2Gᵢⱼ. The float64 copy covers
    `GRAM_COLUMNS` columns of a block at a time (n x 64k x 8 bytes), never
    the block, let alone the model.
    """
    n = spool.count
    total = np.zeros((n, n), dtype=np.float64)
    rows = np.empty((n, GRAM_COLUMNS), dtype=np.float64)
    for _, block in spool_blocks(spool, block_bytes):
        for first in range(0, block.shape[1], GRAM_COLUMNS):
            part = block[:, first : first + GRAM_COLUMNS]
            wide = rows[:, : part.shape[1]]
            wide[...] = part  # float32 -> float64, into the reused buffer
            wide -= wide.mean(axis=0)
            gram = wide @ wide.T
            diagonal = np.diag(gram)
            total += diagonal[:, None] + diagonal[None, :] - 2.0 * gram
    np.maximum(total, 0.0, out=total)  # rounding may leave -1e-12
    np.fill_diagonal(total, 0.0)
    return total
