"""How each spooled update relates to the aggregate and to the others.

The trust stage (`coordinator.strategy.trust`) scores a client by how far its
update uᵢ lies from the aggregate g that the (robust) Aggregator produced,
and whether it points the way the other clients' updates do. All of it comes
from one blockwise pass over the spool, accumulating per block:

    G = U Uᵀ (n x n Gram matrix),   dotᵢ = <uᵢ, g>,   ‖g‖²,
    dᵢ² = ‖uᵢ - g‖² = Σⱼ (uᵢⱼ - gⱼ)²

and then, with ‖uᵢ‖² = Gᵢᵢ:

    cosᵢ      = dotᵢ / (‖uᵢ‖ ‖g‖)                 cosine with the aggregate
    cos(i, k) = Gᵢₖ / (‖uᵢ‖ ‖uₖ‖)                  pairwise cosine
    peerᵢ     = median over k ≠ i of cos(i, k)     cosine with its peers
    closestᵢ  = max over k ≠ i of cos(i, k)        its nearest copy

(a cosine is 0 where a norm is 0). Why peers, not only the aggregate: g is
built from uᵢ itself, so when the clients' own noise outweighs their shared
signal (small models, few inner steps), every update agrees with g through
its own share of it. Measured (d = 5000, 6 honest + 2 sign-flipped, noise
10x the signal): cosᵢ was 0.29 to 0.32 for every update, flipped or not,
while peerᵢ is about +signal² for honest and -signal² for flipped ones. The
median over peers is robust while honest clients are a majority. closestᵢ
exposes colluders who send one vector between them (ALIE and IPM as
published give every attacker the same update): clients training on their
own data never send copies.

dᵢ² is summed from the differences rather than expanded as
‖uᵢ‖² - 2 dotᵢ + ‖g‖², which cancels catastrophically when uᵢ ≈ g (the
honest case). Any Aggregator works: the pass needs only the `HeldSpool` and
the finished aggregate, not the rule that made it.

Precision and memory: each block is copied, 64k columns at a time
(`passes.GRAM_COLUMNS`), into one reused float64 (n + 1) x 64k buffer with g
as its last row, and the products are float64 BLAS: one Gram product gives
G, dotᵢ and ‖g‖², and the differences for dᵢ² are taken in that buffer while
it is still in cache (measured at 10.5M x 8: 0.5 s where whole-block float64
copies took 1.5 s). A hostile client may send any
finite float32, and 3e38² overflows float32, which would make its cosine
inf/inf = NaN and its score one that never falls below a threshold; in
float64 d x (2 x 3.4e38)² stays finite for d below 1e230. Memory: the
aggregators' blocks plus the 64k-column float64 chunk: O(n x b), never O(d). Cost:
the Gram matrix is O(n² d), like Krum's distances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedgrpc.aggregate.blockwise import (
    DEFAULT_BLOCK_BYTES,
    check_out,
    require_committed,
    spool_blocks,
)
from fedgrpc.aggregate.passes import GRAM_COLUMNS, add_gram
from fedgrpc.aggregate.stages import F64Array, HeldSpool


@dataclass(frozen=True, slots=True)
class Agreement:
    """Per-update statistics, in the spool's row order."""

    cosine: F64Array
    """cosᵢ = <uᵢ, g> / (‖uᵢ‖ ‖g‖), in [-1, 1]; 0 where a norm is 0."""
    distance: F64Array
    """dᵢ = ‖uᵢ - g‖₂."""
    peer_cosine: F64Array
    """peerᵢ = median over k ≠ i of cos(uᵢ, uₖ); 0 with no other update."""
    closest_peer_cosine: F64Array
    """closestᵢ = max over k ≠ i of cos(uᵢ, uₖ); 0 with no other update."""
    norm: F64Array
    """‖uᵢ‖₂."""


def measure_agreement(
    held: HeldSpool, aggregate: torch.Tensor, block_bytes: int = DEFAULT_BLOCK_BYTES
) -> Agreement:
    """One pass over `held`: each update against `aggregate` and its peers.

    Raises:
        WrongRoundError: nothing was committed.
        InvalidUpdateError: `aggregate` is not a d-long 1-D float32 CPU tensor.
    """
    require_committed(held, "trust")
    g = check_out(aggregate, held.num_coordinates)
    n = held.count
    # Rows 0..n-1: the updates, row n: g. total = X Xᵀ gives G, dotᵢ and ‖g‖².
    total = np.zeros((n + 1, n + 1), dtype=np.float64)
    gaps = np.zeros(n, dtype=np.float64)
    scratch = np.empty((n + 1, GRAM_COLUMNS), dtype=np.float64)
    for start, block in spool_blocks(held, block_bytes):  # (n, b)
        for first in range(0, block.shape[1], GRAM_COLUMNS):
            part = block[:, first : first + GRAM_COLUMNS]
            x = scratch[:, : part.shape[1]]
            x[:n] = part  # float32 -> float64, into the reused chunk
            x[n] = g[start + first : start + first + part.shape[1]]
            add_gram(total, x)
            np.subtract(x[:n], x[n], out=x[:n])  # in place: uᵢ - g, this chunk
            gaps += np.einsum("ij,ij->i", x[:n], x[:n])
    gram, dots, g_square = total[:n, :n], total[:n, n], float(total[n, n])
    squares = np.diag(gram).copy()
    norms = np.sqrt(squares)
    g_norm = float(np.sqrt(g_square))
    others = _peer_cosines(gram, norms)
    return Agreement(
        cosine=_cosines(dots, norms * g_norm),
        distance=np.sqrt(gaps),
        peer_cosine=np.median(others, axis=1) if n > 1 else np.zeros(n),
        closest_peer_cosine=others.max(axis=1) if n > 1 else np.zeros(n),
        norm=norms,
    )


def _cosines(products: F64Array, norm_products: F64Array) -> F64Array:
    """Products / norm_products clipped to [-1, 1]; 0 where the norms are 0."""
    out = np.zeros_like(products)
    np.divide(products, norm_products, out=out, where=norm_products > 0)
    return np.clip(out, -1.0, 1.0, out=out)


def _peer_cosines(gram: F64Array, norms: F64Array) -> F64Array:
    """Row i: cos(uᵢ, uₖ) for every k ≠ i (n x (n - 1); n x 0 below two updates)."""
    n = norms.size
    pairwise = _cosines(gram, np.outer(norms, norms))
    others: F64Array = pairwise[~np.eye(n, dtype=bool)].reshape(n, max(n - 1, 0))
    return others
