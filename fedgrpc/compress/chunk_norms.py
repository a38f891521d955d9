"""Chunk norms: where the clients' residuals wait, told under the masks.

Why: ranking the shared index set by |outer momentum| freezes it
(`compress.shared_index`'s docstring), because the coordinator cannot see
the clients' error-feedback residuals. Here each client appends to its
masked vector a short tail, one value per chunk of C consecutive
coordinates: the root mean square of its residual e_i *after* this round's
send,

    r_i[j] = sqrt( (1 / |c_j|) · Σ_{t in c_j} e_i[t]² ),   c_j = [jC, (j+1)C) ∩ [0, d)

quantised by the client with the round's fixed-point scale, as its values
(`secagg.FixedPointScale.quantise`: clip C_t, so r_i[j] is clipped at C_t:
a chunk whose typical residual already exceeds the value
clip is as urgent as it gets). The masks cancel in the sum, so the
coordinator learns only the aggregate Σ_i r_i[j] per chunk, never one
client's, and announces next round's set as the chunks of largest
aggregate norm (coarse chunk selection: every client sends the same
chunks, chosen by chunk norms, as issue 18 cites from Sun et al. 2019),
plus the ε·k random positions of `shared_index.choose_index_set`. Sent
chunks come back with a near-zero norm, so the set rotates to where mass
piles up instead of freezing.

Norms rather than squared norms: with 8-bit codes a square would spend the
code range on the few largest chunks and round the rest to 0; the norm
keeps 127 steps over [0, C_t]. Stochastic rounding keeps each code unbiased.

Bounds: the tail has ceil(d / C) values (d / 64 = 1.6 % of d at the
default C), and each honest code is in [0, qmax]. The coordinator clamps
the unmasked sum to [0, n · qmax] (n = survivors), so a client that sends
anything else (masked values cannot be checked) can move any chunk's score
anywhere in that range, and so choose which chunks fill the (1 - ε)k top
part, and nothing more: not k, not the ε·k random part, not the values, not
what others sent (README "Shared sparse index set").
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from fedgrpc.compress.shared_index import choose_index_set
from fedgrpc.errors import InvalidUpdateError, check_config

TIE_DOMAIN = b"fedgrpc/shared-index/chunk-ties/v1"
"""Hashed with the round seed to break ties between equal chunk scores: saturated
chunks all tie at n · qmax, and ties to the lowest position would always favour
the start of the model."""
MAX_CHUNKS = 1 << 24
"""Chunk ranks travel as exact float32 integers to `choose_index_set`: <= 2^24."""


def num_chunks(num_coordinates: int, chunk: int) -> int:
    """Tail length: ceil(d / C) (0 for an empty model).

    Raises:
        ConfigError: C < 1, or more than 2^24 chunks (raise C).
    """
    check_config(chunk >= 1, "chunk", chunk, ">= 1")
    count = math.ceil(num_coordinates / chunk)
    check_config(count <= MAX_CHUNKS, "chunk", chunk, f">= d / {MAX_CHUNKS}")
    return count


def chunk_rms(residual: np.ndarray, chunk: int) -> np.ndarray:
    """Root mean square of `residual` (1-D) per chunk of `chunk` coordinates (float64).

    The last chunk may be shorter; dividing by its own length keeps it
    comparable with the others.
    """
    d = residual.size
    n = num_chunks(d, chunk)
    squares = np.zeros(n * chunk, dtype=np.float64)
    np.square(residual, out=squares[:d], dtype=np.float64)
    sums = squares.reshape(n, chunk).sum(axis=1)
    lengths = np.full(n, float(chunk))
    if n:
        lengths[-1] = d - (n - 1) * chunk
    rms: np.ndarray = np.sqrt(sums / lengths)
    return rms


def chunk_scores(total: np.ndarray, contributors: int, qmax: int) -> np.ndarray:
    """The unmasked tail sum, clamped to [0, contributors · qmax] (int64).

    Honest sums are in that range; anything outside it came from a client
    sending out-of-range codes, and clamping bounds what it can do.
    """
    check_config(contributors >= 1, "contributors", contributors, ">= 1")
    if total.ndim != 1:
        raise InvalidUpdateError(f"chunk norm sum must be 1-D, got {total.shape}")
    return np.clip(total.astype(np.int64), 0, contributors * qmax)


def choose_chunk_set(
    scores: np.ndarray,
    chunk: int,
    num_coordinates: int,
    k: int,
    epsilon: float,
    round_seed: bytes,
) -> torch.Tensor:
    """The k positions: whole chunks by descending score, then ε·k random ones.

    Args:
        scores: `chunk_scores`' clamped sums, one per chunk (ceil(d / C)).
        chunk: C, coordinates per chunk.
        num_coordinates: d.
        k: positions to choose, as `shared_index.choose_index_set`.
        epsilon: the random share of k, as there.
        round_seed: the round's public seed, as there; also orders ties.

    Returns:
        Exactly min(k, d) sorted unique int64 positions, a pure function of
        the arguments. Chunks of equal score are ordered by a draw from
        `round_seed` (TIE_DOMAIN); zero-score chunks are never "top", so
        with no information (round 0, all zero) the set is all random. The
        last chunk taken may be cut: its lowest positions go first.

    Raises:
        InvalidUpdateError: `scores` has the wrong length or negative values.
        ConfigError: as `choose_index_set`.
    """
    n = num_chunks(num_coordinates, chunk)
    if scores.shape != (n,) or (n and int(scores.min()) < 0):
        raise InvalidUpdateError(
            f"chunk scores must be {n} non-negative values, got shape {scores.shape}"
        )
    ties = np.random.default_rng(_seed(round_seed)).random(n)
    # lexsort: last key primary. Descending score, then the seeded draw.
    order = np.lexsort((ties, -scores.astype(np.int64)))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    # Best chunk n, worst positive 1, zero-score 0: exact in float32 (n <= 2^24).
    per_chunk = np.where(scores > 0, n - rank, 0).astype(np.float32)
    ranking = torch.from_numpy(per_chunk).repeat_interleave(chunk)[:num_coordinates]
    return choose_index_set(ranking, k, epsilon, round_seed)


def _seed(round_seed: bytes) -> int:
    digest = hashlib.sha256(TIE_DOMAIN + round_seed).digest()
    return int.from_bytes(digest[:8], "little")
