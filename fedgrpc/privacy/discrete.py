"""The math of the distributed discrete Gaussian: sampling, rounding, accounting.

Client-level DP under secure aggregation (Kairouz, Liu and Steinke 2021,
"The Distributed Discrete Gaussian Mechanism for Federated Learning with
Secure Aggregation", ICML; arXiv 2102.06387, cited as [KLS21] below). Every
client clips its update to L2 norm S, scales it by 1/gamma (gamma: the round's
fixed-point step), rounds it to integers and adds its own discrete Gaussian
share N_Z(0, sigma_c²) before masking. The coordinator unmasks only the sum, in
which n shares add up to noise of variance ≈ n sigma_c².

Why the discrete Gaussian and not Skellam (Agarwal, Kairouz and Liu 2021):
both are sums of integer noise that secure aggregation can carry; the
discrete Gaussian's privacy is stated *as a zCDP / RDP bound* ([KLS21]
Prop. 14) that maps onto a Gaussian release of `dp-accounting` without new
accounting code (see `discrete_noise_multiplier`), and its extra τ term
vanishes at the noise levels a model needs (sigma_c of hundreds of code units),
so the mapping is exact there. Skellam's RDP has a different form
(alpha-dependent correction), which `dp-accounting` has no event for.

Sampling is the rejection sampler of Canonne, Kamath and Steinke 2020 ("The
Discrete Gaussian for Differential Privacy", NeurIPS; Algorithm 3, cited as
[CKS20]), vectorised: each *round of rejection* draws fresh candidates for
every still-pending entry at once, so the Python loop runs over rounds
(a handful: each accepts over half of what is pending), never over elements. It uses
numpy's floating point, not the exact rational arithmetic of [CKS20]: the
distribution is the discrete Gaussian up to float64 rounding of the
acceptance probabilities, and timing is not constant (neither matters for
an honest-but-curious coordinator that sees only the masked sum).

Accounting ([KLS21] Prop. 14 / Eq. 17): with n clients each adding
N_Z(0, sigma_c²), L2 sensitivity Δ₂ and L1 sensitivity Δ₁ (code units), the sum
is (alpha, ε(alpha))-RDP for every alpha > 1 with

    ε(alpha) = min{ alpha/2 · Δ₂²/(nsigma_c²) + τ d,
                alpha/2 · (Δ₂²/(nsigma_c²) + 2 τ Δ₁/(√n sigma_c) + τ² d),
                alpha/2 · (Δ₂/(√n sigma_c) + τ √d)² },
    τ = 10 · Σ_{k=1}^{n-1} exp(-2π² sigma_c² · k/(k+1)).

Since τ d ≤ alpha/2 · 2τ d for alpha ≥ 1, each term is at most alpha/2 · E² for an E
that does not depend on alpha, i.e. the sum is ½E²-zCDP, which is *exactly* the
RDP curve of a Gaussian mechanism with noise multiplier z_eff = 1/E
(Gaussian RDP: alpha/(2z²)). That Gaussian is what the ledger composes.
"""

from __future__ import annotations

import math

import numpy as np

from fedgrpc.errors import ConfigError, InvalidUpdateError, check_config

DEFAULT_ROUNDING_BETA = math.exp(-0.5)
"""β of conditional randomized rounding: [KLS21]'s experiments use e^-0.5."""
MAX_REJECTION_ROUNDS = 200
"""Rounds of the vectorised sampler before giving up. Each round accepts an
entry with probability above 1/2 (measured: 0.52 at sigma = 1/2, 0.76 for sigma >= 10;
[CKS20] bound the expected trials by a constant), so an entry is still
pending after 200 rounds with probability < 2^-200."""
MAX_ROUNDING_TRIES = 100
"""Redraws of conditional rounding. One draw is refused with probability
<= β ([KLS21] Prop. 22); below 1e-21 after 100 draws at β = e^-0.5."""
WRAP_PROBABILITY = 2.0**-40
"""Chance per round that some coordinate of the noised sum leaves the ring
(`ring_bits_for_noise`): below any failure rate that matters."""


def sample_discrete_gaussian(
    sigma: float, size: int, rng: np.random.Generator
) -> np.ndarray:
    """`size` i.i.d. draws of N_Z(0, sigma²) as int64 ([CKS20] Algorithm 3).

    P(X = x) ∝ exp(-x²/(2sigma²)) over the integers. Propose Y from the discrete
    Laplace with P(Y = y) ∝ exp(-|y|/t), t = ⌊sigma⌋ + 1; accept with
    probability exp(-(|Y| - sigma²/t)² / (2sigma²)).

    Raises:
        ConfigError: sigma not finite and > 0.
        RuntimeError: entries still pending after MAX_REJECTION_ROUNDS
            (probability < 2^-200: a broken generator).
    """
    check_config(math.isfinite(sigma) and sigma > 0, "sigma", sigma, "finite > 0")
    t = math.floor(sigma) + 1
    out = _propose(sigma, t, size, rng)
    pending = np.flatnonzero(out == REJECTED)
    for _ in range(MAX_REJECTION_ROUNDS):
        if pending.size == 0:
            return out
        again = _propose(sigma, t, pending.size, rng)
        out[pending] = again
        pending = pending[again == REJECTED]
    raise RuntimeError("discrete Gaussian sampler did not converge")


REJECTED = np.iinfo(np.int64).min
"""Marks a rejected proposal (no discrete Laplace draw comes near it)."""


def _propose(sigma: float, t: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One round of [CKS20] Algorithm 3 on `size` entries; REJECTED where refused.

    Accept Y with probability exp(-(|Y| - sigma²/t)² / (2sigma²)), drawn
    as E > (|Y| - sigma²/t)² / (2sigma²) with E ~ Exp(1): P(E > a) = e^-a, and
    an exponential is cheaper than exp() of a uniform.
    """
    y = _discrete_laplace(t, size, rng)
    gap = np.abs(y).astype(np.float64)
    gap -= sigma * sigma / t
    np.square(gap, out=gap)
    gap /= 2 * sigma * sigma
    y[rng.standard_exponential(size) <= gap] = REJECTED
    return y


def _discrete_laplace(t: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """P(Y = y) ∝ exp(-|y|/t): the difference of two geometric variables.

    ⌊t·E⌋ with E ~ Exp(1) has P(G >= k) = e^{-k/t}, a geometric on {0, 1, ...}
    with ratio q = e^{-1/t}; G₁ - G₂ of two i.i.d. ones has P(y) ∝ q^|y|.
    """
    g1 = np.floor(t * rng.standard_exponential(size))
    g2 = np.floor(t * rng.standard_exponential(size))
    return (g1 - g2).astype(np.int64)


def rounded_l2_bound(c: float, dimension: int, beta: float) -> float:
    """Δ₂: the L2 norm a vector of norm <= c keeps after conditional rounding.

    [KLS21] Theorem 1 (code units, after scaling by 1/gamma):

        Δ₂² = min{ c² + d/4 + √(2 ln(1/β)) · (c + √d/2),  (c + √d)² }

    The second bound holds for any rounding to a neighbouring integer; the
    first holds once draws with a larger norm are redrawn (β = 0: only the
    second).
    """
    check_config(0 <= beta < 1, "dp_rounding_beta", beta, "in [0, 1)")
    check_config(dimension >= 1, "dimension", dimension, ">= 1")
    root_d = math.sqrt(dimension)
    always = c + root_d
    if beta == 0:
        return always
    squared = (
        c * c + dimension / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + root_d / 2)
    )
    return min(always, math.sqrt(squared))


def conditional_round(
    y: np.ndarray, bound: float, rng: np.random.Generator
) -> np.ndarray:
    """Round `y` stochastically to int64, redrawing until ‖·‖₂ <= `bound`.

    Each coordinate rounds up with probability frac(y) (unbiased); a draw
    whose norm exceeds Δ₂ (`rounded_l2_bound`) is redrawn whole, so the
    sensitivity the accounting uses holds for every vector sent ([KLS21]
    conditional randomized rounding).

    Raises:
        InvalidUpdateError: no draw within MAX_ROUNDING_TRIES met the bound
            (the input was not clipped to the norm the bound was made for).
    """
    limit = bound * bound
    for _ in range(MAX_ROUNDING_TRIES):
        codes = np.floor(y + rng.random(y.shape))
        if float(np.dot(codes, codes)) <= limit:
            return codes.astype(np.int64)
    raise InvalidUpdateError(
        f"conditional rounding found no integer vector within L2 norm {bound:g} "
        f"in {MAX_ROUNDING_TRIES} draws; the update was not clipped first"
    )


def clip_l2(x: np.ndarray, clip_norm: float) -> float:
    """Scale float `x` in place to L2 norm <= S; return its norm before."""
    norm = float(np.linalg.norm(x))
    if norm > clip_norm:
        x *= clip_norm / norm
    return norm


def tau(client_std: float, clients: int) -> float:
    """τ = 10 Σ_{k=1}^{n-1} exp(-2π²sigma_c² k/(k+1)) ([KLS21] Theorem 1).

    How far a sum of n discrete Gaussians is from one discrete Gaussian;
    below 1e-16 once sigma_c >= 1.
    """
    k = np.arange(1, clients, dtype=np.float64)
    return float(10.0 * np.exp(-2 * math.pi**2 * client_std**2 * k / (k + 1)).sum())


def discrete_noise_multiplier(
    norm_bound: float, dimension: int, client_std: float, clients: int
) -> float:
    """z_eff: the Gaussian noise multiplier with the same zCDP as the noised sum.

    `norm_bound` Δ₂ and `client_std` sigma_c in code units; `clients` n whose
    noise is in the sum. E² is the least of [KLS21] Prop. 14's three terms
    (module docstring), with Δ₁ <= Δ₂ · min(√d, Δ₂) (integer vectors:
    |x_i| <= x_i²); z_eff = 1/E.
    """
    check_config(clients >= 1, "clients", clients, ">= 1")
    scale = math.sqrt(clients) * client_std
    l2 = norm_bound / scale
    l1 = norm_bound * min(math.sqrt(dimension), norm_bound) / scale
    t = tau(client_std, clients)
    squared = min(
        l2 * l2 + 2 * t * dimension,
        l2 * l2 + 2 * l1 * t + t * t * dimension,
        (l2 + math.sqrt(dimension) * t) ** 2,
    )
    return 1.0 / math.sqrt(squared)


def client_std_for(
    noise_multiplier: float, norm_bound: float, dimension: int, clients: int
) -> float:
    """sigma_c such that n shares give z_eff >= z (`discrete_noise_multiplier`).

    Without τ: sigma_c = z Δ₂ / √n (the sum's std z Δ₂, split n ways). τ only
    lowers z_eff, so sigma_c is raised by bisection until it is covered.
    """
    check_config(noise_multiplier > 0, "noise_multiplier", noise_multiplier, "> 0")
    low = noise_multiplier * norm_bound / math.sqrt(clients)

    def enough(std: float) -> bool:
        return discrete_noise_multiplier(norm_bound, dimension, std, clients) >= (
            noise_multiplier
        )

    if enough(low):
        return low
    high = 2 * low
    while not enough(high):  # doubles past τ's range within a few steps
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def ring_bits_for_noise(
    value_bits: int, participants: int, client_std: float, dimension: int
) -> int:
    """M: ring bits in which n codes plus n noise shares never wrap (but w.p. 2^-40).

    Codes: |Σ codes| <= n · qmax, qmax = 2^(b-1) - 1. Noise: a discrete
    Gaussian is sigma-subgaussian ([CKS20]: E e^{tX} <= e^{t²sigma²/2}), so
    the sum of n shares has
    P(|Σ| >= λ) <= 2 exp(-λ²/(2nsigma_c²)); over d coordinates (union bound)
    λ = sigma_c √(2n ln(2d/p)) leaves failure probability p = WRAP_PROBABILITY.
    The ring's signed range must hold B = n · qmax + λ: m = 1 + ⌈log2(B + 1)⌉,
    and never less than the noiseless ring b + ⌈log2 n⌉.

    Raises:
        ConfigError: m > 64 (the noise is too large for any ring; lower
            dp_noise_multiplier, or raise secagg_clip so one code step is
            coarser).
    """
    qmax = (1 << (value_bits - 1)) - 1
    tail = client_std * math.sqrt(
        2 * participants * math.log(2 * dimension / WRAP_PROBABILITY)
    )
    needed = 1 + math.ceil(math.log2(participants * qmax + tail + 1))
    bits = max(needed, value_bits + math.ceil(math.log2(participants)))
    if bits > 64:
        raise ConfigError(
            f"distributed DP noise needs a {bits}-bit secure-aggregation ring "
            f"(sigma = {client_std:.4g} code units per client, {participants} "
            "participants) but rings stop at 64 bits; lower dp_noise_multiplier, "
            "or raise secagg_clip (a coarser code step shrinks the noise in codes)"
        )
    return bits
