"""The public index set of a secure-aggregation round, and the residual bookkeeping.

Masks make a sparse vector dense, so under secure aggregation every client
sends values at the *same* positions (DESIGN.md step 2): the coordinator
announces, in the signed round start,

    S_t = top-(1 - ε)k of |outer momentum|  union  ε·k random positions

with the random part drawn from the round seed and disjoint from the top
part. The top part follows where the global model is moving; the random part
gives every coordinate a chance to flush its error-feedback residual even
where momentum is zero, and since the set depends only on coordinator state
and the seed, no client's own support leaks. No index bytes go up.

Measured (bench/convergence.py, shared10 vs topk10): ranking by momentum
freezes the set, since momentum is non-zero only where values were sent, so
coordinates outside round 1's set are reached only by the ε·k random draws
and their residuals grow unseen; `optim.divergence.DivergenceGuard` is what
recovers such a run. Treat this set as an experiment; dense int8 in the ring
is the default. `compress.chunk_norms` ranks by the clients' own residuals
instead (summed under the masks), and `compress.residual_age` by how long
each coordinate has waited (from the means alone, so the set rotates);
both feed this function its ranking.

On the data path this is the "compress" step's index choice: the coordinator
calls `choose_index_set` and `encode_index_set`; each client calls
`decode_index_set`, `take_shared_values`, quantises with the round's
`secagg.FixedPointScale`, and `return_unsent` puts the clipping and rounding
error back into its residual e, so what is not sent is retried later (DGC
error feedback). A client holding its residual in `compress.ErrorFeedback`
gets the same bookkeeping with `feedback.subtract(0, SparseValues(positions,
sent))` after gathering `feedback.residual[positions]`.

Selection is O(d): a `kthvalue` threshold and one `nonzero` pass per part,
never a sort of d values (kthvalue on 10M coordinates: 0.08 s on one
thread), with two d-sized float32 temporaries (|m|, then the random keys). Ties
at a threshold go to the lowest positions, so the set is a pure function of
(momentum, k, ε, round_seed) whatever torch's selection order.
"""

from __future__ import annotations

import hashlib
import math

import torch

from fedgrpc.compress.index_coding import decode_indices, encode_indices
from fedgrpc.errors import InvalidUpdateError, check_config

RANDOM_DOMAIN = b"fedgrpc/shared-index/v1"
"""Hashed with the round seed: the seed also keys other draws (the neighbour
graph), and a domain tag keeps this stream independent of them."""


def shared_index_k(density: float, num_coordinates: int) -> int:
    """The announced set's size: k = ceil(density · d), capped at d.

    Raises:
        ConfigError: density outside (0, 1] or a negative d.
    """
    check_config(0 < density <= 1, "density", density, "in (0, 1]")
    check_config(num_coordinates >= 0, "num_coordinates", num_coordinates, ">= 0")
    # The epsilon keeps 0.07 * 100 = 7.000000000000001 at 7 (as topk.group_k).
    return min(num_coordinates, math.ceil(density * num_coordinates - 1e-9))


def choose_index_set(
    momentum: torch.Tensor, k: int, epsilon: float, round_seed: bytes
) -> torch.Tensor:
    """The k positions every client sends this round: sorted, unique, int64.

    Args:
        momentum: the ranking, 1-D float32 of d coordinates, larger |value|
            first: the outer momentum buffer as DESIGN.md states it
            (`torch.zeros(d)` before the first step).
        k: positions to choose; k >= d gives every position (dense), 0 none.
        epsilon: fraction of k drawn at random, in [0, 1]. Positions with
            zero momentum are never "top": if fewer than (1 - ε)k are
            non-zero (round 0: none), the random part grows to fill k.
        round_seed: the round's public seed (any length); same inputs, same set.

    Returns:
        Exactly min(k, d) positions in [0, d), strictly increasing, int64.

    Raises:
        ConfigError: k < 0 or ε outside [0, 1].
        InvalidUpdateError: momentum not 1-D float32, or holding NaN/Inf
            (run `DivergenceGuard` first and reset momentum when it says so).
    """
    check_config(k >= 0, "k", k, ">= 0")
    check_config(0 <= epsilon <= 1, "epsilon", epsilon, "in [0, 1]")
    _check_momentum(momentum)
    d = momentum.numel()
    if k >= d:
        return torch.arange(d, dtype=torch.int64)
    magnitude = momentum.abs()
    nonzero = int(torch.count_nonzero(magnitude))
    k_top = min(k - round(epsilon * k), nonzero)
    top = _largest(magnitude, k_top)
    del magnitude  # peak memory: two d-sized temporaries, never three
    # Random keys in [0, 1); -1 at the top part excludes it, so the random part
    # is disjoint and the union has exactly k positions.
    keys = torch.rand(d, generator=_generator(round_seed))
    keys[top] = -1.0
    chosen = torch.cat((top, _largest(keys, k - k_top)))
    return torch.sort(chosen).values


def encode_index_set(positions: torch.Tensor) -> bytes:
    """The announcement's bytes: `index_coding`'s gap coding of the sorted set.

    Measured for a 10M-coordinate ranking: 4.7 bits per position at 10 %
    density, 9.0 at 1 % (so a 10 % set of a 100M model is ~6 MB): cut it
    with `torch.searchsorted` at block boundaries if it must travel in
    ≈ 1 MiB chunks.
    """
    return encode_indices(positions.numpy())


def decode_index_set(
    data: bytes | memoryview, k: int, num_coordinates: int
) -> torch.Tensor:
    """Decode an announced set: exactly `k` sorted positions in [0, d).

    Raises:
        InvalidUpdateError: malformed bytes, a wrong count, or a position
            outside the model (the client must refuse the round).
    """
    return torch.from_numpy(decode_indices(memoryview(data), k, num_coordinates))


def take_shared_values(residual: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Move e[positions] out of the residual e: returns them and zeroes them in e.

    Exact bookkeeping: returned + e_after == e_before, value for value, and
    every coordinate outside `positions` stays in e untouched.

    Args:
        residual: e, 1-D float32, modified in place.
        positions: the announced set (unique, in range).
    """
    taken = residual[positions]  # advanced indexing copies
    residual[positions] = 0.0
    return taken


def return_unsent(
    residual: torch.Tensor,
    positions: torch.Tensor,
    taken: torch.Tensor,
    sent: torch.Tensor,
) -> None:
    """e[positions] += taken - sent: what clipping and rounding cut stays in e.

    `sent` is what the aggregate will count for this client (the round
    scale's dequantised codes), so over rounds Σ sent + e == Σ Δ.
    """
    residual.index_add_(0, positions, taken - sent)


def _check_momentum(momentum: torch.Tensor) -> None:
    if momentum.dim() != 1 or momentum.dtype != torch.float32:
        raise InvalidUpdateError(
            f"momentum must be a 1-D float32 tensor, got shape "
            f"{tuple(momentum.shape)} dtype {momentum.dtype}"
        )
    # One reduction, no d-byte mask (as optim.outer): NaN/Inf make the sum so.
    if not math.isfinite(float(momentum.sum())):
        raise InvalidUpdateError(
            "outer momentum contains NaN or Inf: reset it before choosing an "
            "index set (DivergenceGuard.observe says when)"
        )


def _largest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the `count` largest scores, ties to the lowest positions."""
    if count <= 0:
        return torch.zeros(0, dtype=torch.int64)
    # kth largest = (d - count + 1)-th smallest; everything above it is in.
    threshold = torch.kthvalue(scores, scores.numel() - count + 1).values
    above = torch.nonzero(scores > threshold).squeeze(1)
    ties = torch.nonzero(scores == threshold).squeeze(1)  # ascending positions
    return torch.cat((above, ties[: count - above.numel()]))


def _generator(round_seed: bytes) -> torch.Generator:
    digest = hashlib.sha256(RANDOM_DOMAIN + round_seed).digest()
    # manual_seed takes a 64-bit seed; 63 bits avoid sign trouble across torch.
    seed = int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
    return torch.Generator().manual_seed(seed)
