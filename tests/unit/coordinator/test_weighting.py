"""`rounds.weighting`: an update's weight, claims refused, counters that saturate."""

from __future__ import annotations

import math

import pytest

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.coordinator.rounds.weighting import (
    COUNTER_MAX,
    SampleWeighting,
    check_claims,
    saturating_add,
)
from fedgrpc.domain.requests import UpdateHeaderInfo
from fedgrpc.errors import ConfigError, InvalidUpdateError


def _config(**settings: object) -> CoordinatorConfig:
    return CoordinatorConfig(seed_from_first_client=True, **settings)  # type: ignore[arg-type]


def _client(factor: float = 1.0) -> ClientRecord:
    return ClientRecord("c00001", "a", b"t" * 16, weight_factor=factor)


def _header(samples: int = 1, loss: float = 1.0) -> UpdateHeaderInfo:
    return UpdateHeaderInfo(
        client_id="c00001", session_token=b"", round_id=1, base_version=0,
        is_initial_weights=False, codec="dense-fp32", num_coordinates=4,
        num_samples=max(1, samples), train_loss=loss, declared_samples=samples,
    )  # fmt: skip


def test_samples_weighting_is_the_claim_as_sent() -> None:
    weighting = SampleWeighting(_config(weighting="samples"))
    assert weighting.weight(_client(), 10**9) == 10**9


def test_equal_weighting_ignores_the_claim() -> None:
    weighting = SampleWeighting(_config(weighting="equal"))
    weighting.round_closed([5, 7])
    assert weighting.weight(_client(), 10**9) == 1.0


def test_capped_weighting_is_equal_until_a_round_showed_a_typical_claim() -> None:
    weighting = SampleWeighting(_config())
    assert weighting.mode == "capped"
    assert weighting.weight(_client(), 10**9) == 1.0


def test_capped_weighting_keeps_honest_claims_and_caps_a_liar_at_2x_the_median() -> (
    None
):
    weighting = SampleWeighting(_config())
    weighting.round_closed([90, 100, 10**9])
    assert weighting.reference == 100
    assert weighting.weight(_client(), 150) == 150
    assert weighting.weight(_client(), 10**9) == 200


def test_a_liar_alone_with_one_honest_client_cannot_raise_the_reference() -> None:
    weighting = SampleWeighting(_config())
    weighting.round_closed([100, 10**9])  # the lower median: the honest claim
    assert weighting.reference == 100


def test_a_round_without_commits_keeps_the_last_reference() -> None:
    weighting = SampleWeighting(_config())
    weighting.round_closed([100])
    weighting.round_closed([])
    assert weighting.reference == 100


@pytest.mark.parametrize("mode", ["samples", "equal", "capped"])
def test_every_weighting_is_scaled_by_the_soft_quarantine_factor(mode: str) -> None:
    weighting = SampleWeighting(_config(weighting=mode))
    weighting.round_closed([100])
    assert weighting.weight(_client(0.25), 100) == 0.25 * weighting.weight(
        _client(), 100
    )


@pytest.mark.parametrize(
    ("factor", "applied"), [(0.0, 1e-6), (math.nan, 1e-6), (5.0, 1.0)]
)
def test_the_trust_factor_can_only_lower_a_weight_and_never_to_zero(
    factor: float, applied: float
) -> None:
    weighting = SampleWeighting(_config(weighting="samples"))
    assert weighting.weight(_client(factor), 100) == pytest.approx(100 * applied)


def test_a_claim_over_max_samples_per_update_is_refused_naming_the_setting() -> None:
    config = _config(max_samples_per_update=1000)
    check_claims(config, _header(1000))
    with pytest.raises(InvalidUpdateError, match="max_samples_per_update"):
        check_claims(config, _header(1001))


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_is_refused(loss: float) -> None:
    with pytest.raises(InvalidUpdateError, match="train_loss"):
        check_claims(_config(), _header(loss=loss))


def test_counters_saturate_instead_of_passing_2_63() -> None:
    assert saturating_add(5, 7) == 12
    assert saturating_add(COUNTER_MAX - 1, 2**64 - 1) == COUNTER_MAX
    assert saturating_add(COUNTER_MAX, 1) == COUNTER_MAX


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("weighting", "median"),
        ("max_samples_per_update", 0),
        ("max_sample_weight_ratio", 0.5),
        ("guard_norm_floor", 1.0),
    ],
)
def test_bad_weighting_settings_are_refused_naming_them(
    setting: str, value: object
) -> None:
    with pytest.raises(ConfigError, match=setting):
        _config(**{setting: value})
