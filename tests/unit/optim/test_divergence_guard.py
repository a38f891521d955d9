"""The divergence guard: trips on blow-ups, stays quiet on converging runs."""

from __future__ import annotations

import math

import pytest

from fedgrpc.errors import ConfigError
from fedgrpc.optim.divergence import DivergenceGuard, GuardConfig, GuardVerdict


def _feed(guard: DivergenceGuard, norms: list[float]) -> list[GuardVerdict]:
    return [guard.observe(norm) for norm in norms]


def test_converging_and_noisy_norms_never_trip() -> None:
    # Decaying by 3 % a round, with -30 % / +30 % round-to-round noise.
    norms = [10.0 * 0.97**r * (1.3 if r % 3 else 0.7) for r in range(200)]
    guard = DivergenceGuard()

    verdicts = _feed(guard, norms)

    assert all(v.apply and not v.dense_next for v in verdicts)
    assert guard.trips == 0


def test_a_burst_trips_drops_the_round_resets_momentum_and_goes_dense() -> None:
    guard = DivergenceGuard(GuardConfig(fallback_rounds=3))
    _feed(guard, [1.0, 1.1, 0.9, 1.0])

    verdict = guard.observe(50.0)

    assert verdict == GuardVerdict(False, True, True, True, "spike")
    assert guard.dense_now
    after = _feed(guard, [1.0, 1.0, 1.0, 1.0])
    assert [v.dense_next for v in after] == [True, True, False, False]
    assert [v.reason for v in after] == ["fallback"] * 3 + ["ok"]
    assert not guard.dense_now


def test_steady_exponential_growth_trips_on_drift() -> None:
    # 1.15x a round never exceeds 2x the moving median, but it is divergence.
    guard = DivergenceGuard()

    verdicts = _feed(guard, [1.15**r for r in range(40)])

    reasons = [v.reason for v in verdicts if not v.apply]
    assert reasons[0] == "drift"
    assert guard.trips >= 1


def test_a_climbing_train_loss_trips_though_the_norm_is_calm() -> None:
    guard = DivergenceGuard()
    losses = [3.0, 2.6, 2.4, 2.3, 2.25, 2.3, 2.5, 2.8]  # best median 2.35

    verdicts = [guard.observe(1.0, loss) for loss in losses]

    assert [v.reason for v in verdicts] == ["ok"] * 7 + ["loss"]


def test_a_slowly_falling_noisy_loss_never_trips() -> None:
    guard = DivergenceGuard()
    losses = [3.0 * 0.99**r * (1.05 if r % 2 else 0.95) for r in range(100)]

    verdicts = [guard.observe(1.0, loss) for loss in losses]

    assert all(v.apply for v in verdicts)


@pytest.mark.parametrize("norm", [math.nan, math.inf])
def test_non_finite_trips_even_without_history(norm: float) -> None:
    guard = DivergenceGuard()

    verdict = guard.observe(norm)

    assert not verdict.apply
    assert verdict.reset_momentum
    assert verdict.reset_residuals
    assert verdict.reason == "non_finite"


def test_the_flush_after_a_trip_is_not_judged_against_old_norms() -> None:
    guard = DivergenceGuard(GuardConfig(fallback_rounds=2))
    _feed(guard, [1.0] * 5 + [100.0])

    flush = guard.observe(30.0)  # first dense round empties every residual

    assert flush.apply


def test_bad_constants_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        GuardConfig(min_history=9, window=8)
    with pytest.raises(ConfigError):
        GuardConfig(spike_factor=1.0)
    with pytest.raises(ConfigError):
        GuardConfig(drift_factor=2.0, spike_factor=4.0)
