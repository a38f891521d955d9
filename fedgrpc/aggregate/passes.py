"""One pass over a spool: per-client distances, and a centre rebuilt block by block.

The distance-based robust rules (Krum, geometric median, centered clipping,
the norm bound) and the trust scores all need, per client i, a squared
distance ‖uᵢ - c‖² to some centre c of length d. Neither the n x d matrix nor
a second model-sized buffer may be in memory, so each function here walks
the spool once, a block of coordinates at a time (`spool_blocks`), and keeps
only O(n) accumulators between blocks.

The iterative rules (geometric median, centered clipping) need no pass per
iteration: every centre they build is an affine combination c = Σₖ wₖ xₖ
(Σ w = 1) of the updates and, for centered clipping, the previous
aggregate. One pass takes the centred Gram matrix Ĝ of those rows
(`centered_gram`); each iteration's distances ‖uᵢ - c‖ then come from Ĝ and
w alone (`coefficient_distances`, O(n²)), and a last pass writes the final
centre (`combine`, in place in the caller's buffer). Two passes whatever the
iteration count, where one pass per iteration cost 0.5-0.8 s at 10.5M x 8.

Squared norms are summed in float64 per block (numpy's pairwise sum, cast
as it goes: no float64 copy of the block) so that d = 10⁸ coordinates do not
lose the small distances in rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from fedgrpc.aggregate.blockwise import DEFAULT_BLOCK_BYTES, spool_blocks
from fedgrpc.aggregate.sortnet import order_rows
from fedgrpc.aggregate.stages import F32Array, F64Array, HeldSpool

GRAM_COLUMNS = 1 << 16
"""Columns per float64 Gram product (`centered_gram`, `agreement`): the
float64 copy of (n + 2) x 64k values stays in cache for the ops that follow."""
NUMPY_GRAM_MAX_ROWS = 16
"""Up to this many rows numpy's BLAS forms X Xᵀ fastest, beyond it torch's.

Measured on this machine (float64, 16 MiB blocks, 3 runs): n = 8 x 524k took
0.028 s in numpy and 0.117 s in torch; n = 32 x 131k took 0.71 s in numpy
(its BLAS's threading stalls on that shape) and 0.10 s in torch."""


def add_gram(total: F64Array, rows: F64Array) -> None:
    """Total += X Xᵀ for one float64 chunk X (BLAS, reading `rows` in place)."""
    if rows.shape[0] <= NUMPY_GRAM_MAX_ROWS:
        total += rows @ rows.T
        return
    wide = torch.from_numpy(rows)
    total += (wide @ wide.T).numpy()


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


def combine(
    spool: HeldSpool,
    coef: F64Array,
    out: F32Array,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    keep: float = 0.0,
) -> None:
    """Out ← keep·out + Σᵢ coefᵢ·uᵢ, one pass (a selection's mean, a new centre).

    Σᵢ coefᵢ·uᵢ[block] is one float32 matrix-vector product per block,
    through torch (its BLAS call runs on every core: 5 ms per 32 MiB block
    against numpy's 10 ms here). Block j of `out` is read only for block j,
    so `keep` ≠ 0 rewrites the old centre in place with no second buffer.
    """
    weights = torch.from_numpy(coef.astype(np.float32))
    mixed: F32Array | None = None
    for start, block in spool_blocks(spool, block_bytes):
        part = out[start : start + block.shape[1]]
        if keep == 0.0:
            torch.mv(torch.from_numpy(block).t(), weights, out=torch.from_numpy(part))
            continue
        if mixed is None:
            mixed = np.empty(block.shape[1], dtype=np.float32)  # first is widest
        combined = mixed[: block.shape[1]]
        torch.mv(torch.from_numpy(block).t(), weights, out=torch.from_numpy(combined))
        part *= np.float32(keep)
        part += combined


def centered_gram(
    spool: HeldSpool,
    extra: F32Array | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> F64Array:
    """Ĝ = X̂·X̂ᵀ for the rows x = (u₁, ..., uₙ[, extra]), one pass.

    X̂ is X shifted per coordinate by m = the coordinate-wise median of the
    updates (`extra` left out of it). Any distance between points of the
    form Σₖ wₖ xₖ with Σₖ wₖ = 1 (an update, a centre built from them) is
    then (w - w')ᵀ Ĝ (w - w'), whatever the shift. The shift is what keeps
    ‖a‖² + ‖b‖² - 2a·b free of cancellation: honest rows become small, and
    a hostile row of ±3e38 stays alone in its own row and column of Ĝ,
    where with the mean as the shift it would move every honest row by
    3e38/n and bury their distances in its rounding error.

    Per block, in float64: the copy covers `GRAM_COLUMNS` columns at a time
    ((n + 1) x 64k x 8 bytes, plus an n x 64k float32 copy for the median's
    sorting network), never the block or the model.
    """
    n = spool.count
    rows = n + (extra is not None)
    total = np.zeros((rows, rows), dtype=np.float64)
    scratch = np.empty((rows, GRAM_COLUMNS), dtype=np.float64)
    ordered = np.empty((n, GRAM_COLUMNS), dtype=np.float32)
    spare = np.empty(GRAM_COLUMNS, dtype=np.float32)
    shift = np.empty(GRAM_COLUMNS, dtype=np.float64)
    middle = tuple(sorted({(n - 1) // 2, n // 2}))
    for start, block in spool_blocks(spool, block_bytes):
        for first in range(0, block.shape[1], GRAM_COLUMNS):
            part = block[:, first : first + GRAM_COLUMNS]
            width = part.shape[1]
            wide, median = scratch[:, :width], shift[:width]
            wide[:n] = part  # float32 -> float64, into the reused buffer
            if extra is not None:
                wide[n] = extra[start + first : start + first + width]
            np.copyto(ordered[:, :width], part)
            low, *high = order_rows(ordered[:, :width], middle, spare)
            np.add(low, high[-1] if high else low, out=median)
            median *= 0.5
            wide -= median
            add_gram(total, wide)
    return total


def pairwise_squared_distances(
    spool: HeldSpool, block_bytes: int = DEFAULT_BLOCK_BYTES
) -> F64Array:
    """The n x n matrix ‖uᵢ - uⱼ‖² = Ĝᵢᵢ + Ĝⱼⱼ - 2Ĝᵢⱼ, one pass (`centered_gram`)."""
    return pairwise_from_gram(centered_gram(spool, None, block_bytes))


def pairwise_from_gram(gram: F64Array) -> F64Array:
    """‖uᵢ - uⱼ‖² = Ĝᵢᵢ + Ĝⱼⱼ - 2Ĝᵢⱼ from `centered_gram`'s Ĝ (no pass)."""
    diagonal = np.diag(gram)
    total: F64Array = diagonal[:, None] + diagonal[None, :] - 2.0 * gram
    np.maximum(total, 0.0, out=total)  # rounding may leave -1e-12
    np.fill_diagonal(total, 0.0)
    return total


def coefficient_distances(gram: F64Array, gamma: F64Array, count: int) -> F64Array:
    """‖uᵢ - c‖ for i < `count`, c = Σₖ wₖ xₖ (Σ w = 1), from `centered_gram`'s Ĝ.

    ‖uᵢ - c‖² = (eᵢ - w)ᵀ Ĝ (eᵢ - w) = Ĝᵢᵢ - 2(Ĝw)ᵢ + wᵀĜw: O(n²), no pass.
    """
    product = gram @ gamma
    squares = np.diag(gram)[:count] - 2.0 * product[:count] + float(gamma @ product)
    distances: F64Array = np.sqrt(np.maximum(squares, 0.0))
    return distances
