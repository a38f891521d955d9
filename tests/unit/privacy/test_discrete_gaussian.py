"""privacy.discrete: the sampler's law, conditional rounding, the zCDP map, the ring."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedgrpc.errors import ConfigError, InvalidUpdateError
from fedgrpc.privacy import PrivacyLedger, Release
from fedgrpc.privacy.discrete import (
    client_std_for,
    conditional_round,
    discrete_noise_multiplier,
    ring_bits_for_noise,
    rounded_l2_bound,
    sample_discrete_gaussian,
    tau,
)


def exact_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    """N_Z(0, sigma^2) by direct summation (mass beyond +-40 sigma is < 1e-300)."""
    span = np.arange(-int(40 * sigma) - 1, int(40 * sigma) + 2)
    norm = np.exp(-(span.astype(np.float64) ** 2) / (2 * sigma * sigma)).sum()
    mass: np.ndarray = np.exp(-(support.astype(np.float64) ** 2) / (2 * sigma**2))
    return np.asarray(mass / norm)


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_samples_follow_the_discrete_gaussian_pmf(sigma: float) -> None:
    rng = np.random.default_rng(1)
    draws = sample_discrete_gaussian(sigma, 400_000, rng)

    support = np.arange(-6, 7)
    counts = np.array([np.count_nonzero(draws == k) for k in support])
    expected = exact_pmf(sigma, support) * draws.size

    # Pearson chi-square over 13 cells; 60 is far beyond any honest draw
    # (p < 1e-7 at 12 degrees of freedom), while a rounded continuous
    # Gaussian at sigma = 0.5 is off by > 1e4.
    cells = expected > 5
    chi2 = float((((counts - expected) ** 2)[cells] / expected[cells]).sum())
    assert chi2 < 60
    assert draws.dtype == np.int64


def test_large_sigma_has_the_announced_variance_and_no_bias() -> None:
    rng = np.random.default_rng(2)
    sigma = 7333.0
    draws = sample_discrete_gaussian(sigma, 200_000, rng)

    # std of a variance estimate: sqrt(2/n) = 0.3 %; of the mean: sigma/sqrt(n).
    assert draws.var() / sigma**2 == pytest.approx(1.0, abs=0.02)
    assert abs(draws.mean()) < 5 * sigma / math.sqrt(draws.size)


def test_the_sampler_refuses_a_zero_sigma() -> None:
    with pytest.raises(ConfigError, match="sigma"):
        sample_discrete_gaussian(0.0, 3, np.random.default_rng(0))


def test_rounded_bound_is_the_papers_formula() -> None:
    c, d, beta = 100.0, 400, math.exp(-0.5)
    squared = c * c + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(d) / 2)

    assert rounded_l2_bound(c, d, beta) == pytest.approx(math.sqrt(squared))
    assert rounded_l2_bound(c, d, 0.0) == pytest.approx(c + math.sqrt(d))
    with pytest.raises(ConfigError, match="dp_rounding_beta"):
        rounded_l2_bound(c, d, 1.0)


def test_conditional_rounding_meets_the_bound_and_stays_unbiased() -> None:
    rng = np.random.default_rng(3)
    d = 1000
    y = rng.normal(size=d)
    y *= 30.0 / np.linalg.norm(y)  # norm 30 in code units
    bound = rounded_l2_bound(30.0, d, math.exp(-0.5))

    draws = np.stack([conditional_round(y, bound, rng) for _ in range(400)])

    assert (np.linalg.norm(draws, axis=1) <= bound).all()
    assert ((draws == np.floor(y)) | (draws == np.ceil(y))).all()
    # Each coordinate's mean over 400 draws is within 5 std (0.5/sqrt(400)).
    assert np.abs(draws.mean(axis=0) - y).max() < 5 * 0.5 / math.sqrt(400) + 0.02


def test_conditional_rounding_refuses_an_unclipped_vector() -> None:
    y = np.full(100, 5.0)  # norm 50
    with pytest.raises(InvalidUpdateError, match="not clipped"):
        conditional_round(y, 10.0, np.random.default_rng(0))


def test_noise_multiplier_is_the_gaussians_when_tau_vanishes() -> None:
    # sigma_c = 100: tau < 1e-300, so z_eff = sqrt(n) sigma_c / Delta_2 exactly.
    assert tau(100.0, 8) == 0.0
    z = discrete_noise_multiplier(50.0, 10_000, 100.0, 8)
    assert z == pytest.approx(math.sqrt(8) * 100.0 / 50.0, rel=1e-12)


def test_tau_lowers_the_noise_multiplier_at_small_sigma() -> None:
    plain = math.sqrt(4) * 0.3 / 2.0
    assert tau(0.3, 4) > 0.1
    assert discrete_noise_multiplier(2.0, 1000, 0.3, 4) < plain


@pytest.mark.parametrize("dims", [10, 100_000])
def test_client_std_reaches_the_target_multiplier_tightly(dims: int) -> None:
    for bound in (0.5, 3.0, 300.0):
        std = client_std_for(1.1, bound, dims, 5)
        reached = discrete_noise_multiplier(bound, dims, std, 5)
        assert reached >= 1.1
        assert reached < 1.1 * 1.001 or std == pytest.approx(1.1 * bound / math.sqrt(5))


def test_more_survivors_spend_less_epsilon() -> None:
    std = client_std_for(1.0, 200.0, 5000, 3)
    ledger = PrivacyLedger("rdp")
    at_min = ledger.epsilon_after(
        Release(discrete_noise_multiplier(200.0, 5000, std, 3)), 1e-5
    )
    at_more = ledger.epsilon_after(
        Release(discrete_noise_multiplier(200.0, 5000, std, 8)), 1e-5
    )
    gaussian = ledger.epsilon_after(Release(1.0), 1e-5)

    assert at_min == pytest.approx(gaussian, rel=1e-6)  # the mapping is exact here
    assert at_more < at_min


def test_the_ring_holds_n_clients_codes_plus_noise_at_the_tail() -> None:
    rng = np.random.default_rng(4)
    n, std, d = 8, 500.0, 100_000
    bits = ring_bits_for_noise(8, n, std, d)
    total = 127 * n + sum(sample_discrete_gaussian(std, d, rng) for _ in range(n))

    assert bits > 8 + 3  # wider than the noiseless ring
    assert int(np.abs(total).max()) < (1 << (bits - 1))
    # And by no more than a few bits: 2^(m-2) is below the tail bound used.
    assert (1 << (bits - 2)) < 127 * n + std * math.sqrt(
        2 * n * math.log(2 * d / 2.0**-40)
    )


def test_noise_beyond_a_64_bit_ring_is_refused_naming_the_settings() -> None:
    with pytest.raises(ConfigError, match=r"dp_noise_multiplier.*secagg_clip"):
        ring_bits_for_noise(8, 10, 1e19, 1000)
