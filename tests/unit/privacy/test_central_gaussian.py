"""Central DP-FedAvg: exact clipping, the noise's size, the release, adaptive S."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedgrpc.aggregate import StagedSum, WeightedMean
from fedgrpc.aggregate.buffers import BufferPool
from fedgrpc.compress.blocks import SparseValues
from fedgrpc.errors import ConfigError
from fedgrpc.privacy import PrivacyLedger, Release
from fedgrpc.privacy.central import (
    AdaptiveClipping,
    CentralGaussian,
    update_noise_multiplier,
)
from fedgrpc.privacy.stage import PrivacyStage


def _gen(seed: int = 0) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def test_it_is_a_privacy_stage() -> None:
    assert isinstance(CentralGaussian(1.0, 1.0), PrivacyStage)


def test_a_long_update_is_clipped_to_s_and_never_past_it() -> None:
    stage = CentralGaussian(0.5, 1.0)
    update = torch.randn(100_003, generator=_gen()) * 7.0
    before = float(torch.linalg.vector_norm(update.double()))
    direction = update / torch.linalg.vector_norm(update)

    returned = stage.clip_update(update)

    after = float(torch.linalg.vector_norm(update.double()))
    assert returned == pytest.approx(before, rel=1e-12)
    assert after <= 0.5
    assert after == pytest.approx(0.5, rel=1e-6)
    assert torch.allclose(update / torch.linalg.vector_norm(update), direction)


def test_a_short_update_is_left_bit_for_bit() -> None:
    stage = CentralGaussian(10.0, 1.0)
    update = torch.full((64,), 0.1)
    kept = update.clone()
    stage.clip_update(update)
    assert torch.equal(update, kept)


def test_noise_on_the_mean_has_std_z_s_over_n() -> None:
    # A fixed generator: the sample std of 400k draws is within 0.2 % of the
    # true one (1/sqrt(2d)); the 1 % tolerance cannot flake.
    stage = CentralGaussian(2.0, 1.5)
    mean = torch.zeros(400_000)
    stage.finish_aggregate(mean, 4, _gen(1))
    expected = 1.5 * 2.0 / 4
    assert float(mean.std()) == pytest.approx(expected, rel=0.01)
    assert abs(float(mean.mean())) < 5 * expected / math.sqrt(mean.numel())


def test_noise_is_the_sums_noise_divided_by_n() -> None:
    stage = CentralGaussian(1.0, 1.0)
    one, four = torch.zeros(1000), torch.zeros(1000)
    stage.finish_aggregate(one, 1, _gen(7))
    stage.finish_aggregate(four, 4, _gen(7))
    assert torch.allclose(four * 4, one, atol=1e-6)


def test_release_is_gaussian_with_all_clients_and_fixed_sampling_under_selection() -> (
    None
):
    assert CentralGaussian(1.0, 1.2).round_release(5, 0) == Release(1.2)
    sampled = CentralGaussian(1.0, 1.2, sampling="fixed").round_release(10, 100)
    assert sampled == Release(
        0.6, 0.1, sampling="fixed", population=100, sample_size=10
    )
    assert CentralGaussian(1.0, 1.2, sampling="fixed").neighbouring == "replace_one"
    # the ledger takes it: amplification makes it cheaper than a full round
    ledger = PrivacyLedger("rdp", "replace_one")
    full = ledger.epsilon_after(Release(0.6), 1e-5)
    assert sampled is not None
    assert ledger.epsilon_after(sampled, 1e-5) < full


def test_adaptive_clipping_moves_s_toward_the_quantile_of_the_norms() -> None:
    # Norms are all ~10; S starts at 0.1 (every update clipped) and must
    # climb toward the median (gamma = 0.5), then hover around it.
    adaptive = AdaptiveClipping(0.5, 0.2, count_noise=1.0)
    stage = CentralGaussian(0.1, 0.5, adaptive=adaptive)
    generator = _gen(3)
    norms = np.linspace(8.0, 12.0, 20)
    history = []
    for _ in range(80):
        for norm in norms:
            stage.clip_update(torch.full((4,), float(norm) / 2.0))
        stage.finish_aggregate(torch.zeros(4), len(norms), generator)
        history.append(stage.clip_norm)
    assert history[10] > 0.25  # it grew geometrically (x e^0.1 a round)
    assert 8.0 < float(np.median(history[-20:])) < 12.0


def test_a_skipped_rounds_clip_outcomes_do_not_count_in_the_next() -> None:
    adaptive = AdaptiveClipping(0.5, 1.0, count_noise=1e-9 + 0.6)
    stage = CentralGaussian(1.0, 1.0, adaptive=adaptive)
    for _ in range(5):  # a round that was skipped: all clipped, never released
        stage.clip_update(torch.full((4,), 10.0))
    for _ in range(3):  # the applied round: none clipped
        stage.clip_update(torch.zeros(4))
    stage.finish_aggregate(torch.zeros(4), 3, _gen(0))
    assert stage.clip_norm < 1.0  # all 3 unclipped: S shrinks


def test_adaptive_noise_leaves_z_for_the_count() -> None:
    adaptive = AdaptiveClipping(0.5, 0.2, count_noise=1.0)
    z_update = update_noise_multiplier(1.0, adaptive)
    # 1/z^2 = 1/z_update^2 + 1/(2 sigma_b)^2 (Andrew et al. 2021)
    assert z_update**-2 + 2.0**-2 == pytest.approx(1.0)
    assert CentralGaussian(1.0, 1.0, adaptive=adaptive).update_noise_multiplier == (
        pytest.approx(z_update)
    )


def test_a_count_noise_too_small_for_z_is_refused() -> None:
    with pytest.raises(ConfigError, match="dp_clip_count_noise"):
        CentralGaussian(1.0, 2.0, adaptive=AdaptiveClipping(0.5, 0.2, 1.0))


def test_state_round_trips_an_adaptive_s_and_leaves_a_fixed_one_to_the_config() -> None:
    adaptive = AdaptiveClipping(0.5, 0.2, 1.0)
    stage = CentralGaussian(1.0, 1.0, adaptive=adaptive)
    stage.clip_norm = 3.25
    other = CentralGaussian(1.0, 1.0, adaptive=adaptive)
    other.load_state_dict(stage.state_dict())
    assert other.clip_norm == 3.25
    fixed = CentralGaussian(0.5, 1.0)  # the operator changed dp_clip_norm
    fixed.load_state_dict(stage.state_dict())
    assert fixed.clip_norm == 0.5
    assert fixed.state_dict() == {}


def test_the_staged_sum_clips_dense_and_coded_updates_at_commit() -> None:
    stage = CentralGaussian(1.0, 1.0)
    d = 50
    acc = StagedSum(d, BufferPool(keep_bytes=1 << 20), 1 << 20, clip=stage.clip_update)
    scratch = np.empty(d, np.float32)
    big = np.full(d, 3.0, np.float32)
    acc.add_values(1, 0, big, 1.0, scratch)
    acc.add_block(2, 0, SparseValues(np.array([0, 7]), np.array([30.0, 40.0],
                  np.float32)), 1.0)  # fmt: skip
    acc.commit_update(1, 1.0)
    acc.commit_update(2, 1.0)
    expected = big / np.linalg.norm(big)
    expected[0] += 0.6
    expected[7] += 0.8
    out = torch.empty(d)
    WeightedMean().aggregate(acc.held(), out)
    assert np.allclose(out.numpy() * 2, expected, atol=1e-6)
