"""The round-wide clip rule: Adam's bound first, then counts and the aggregate."""

from __future__ import annotations

import pytest

from fedgrpc.errors import ConfigError
from fedgrpc.secagg import FixedPointScale
from fedgrpc.secagg.round_scale import (
    ClipRule,
    initial_round_scale,
    next_round_scale,
)


def test_round_zero_clip_is_h_times_inner_lr() -> None:
    scale = initial_round_scale(50, 3e-3, value_bits=8)

    assert scale.clip == pytest.approx(0.15)
    assert scale.value_bits == 8


def test_too_much_clipping_grows_the_clip() -> None:
    current = FixedPointScale(clip=0.1)

    after = next_round_scale(
        current, clipped=50, quantised=1_000, aggregate_abs_max=0.01
    )

    assert after.clip == pytest.approx(0.2)


def test_little_clipping_follows_the_aggregate_within_one_growth_step() -> None:
    current = FixedPointScale(clip=0.1, value_bits=4)

    near = next_round_scale(current, clipped=1, quantised=1_000, aggregate_abs_max=0.03)
    tiny = next_round_scale(current, clipped=0, quantised=1_000, aggregate_abs_max=1e-6)
    huge = next_round_scale(current, clipped=0, quantised=1_000, aggregate_abs_max=9.0)

    assert near.clip == pytest.approx(0.06)  # headroom 2 x 0.03
    assert tiny.clip == pytest.approx(0.05)  # at most halved
    assert huge.clip == pytest.approx(0.2)  # at most doubled
    assert near.value_bits == 4


@pytest.mark.parametrize("abs_max", [0.0, float("nan"), float("inf")])
def test_an_empty_or_broken_aggregate_keeps_the_clip(abs_max: float) -> None:
    current = FixedPointScale(clip=0.1)

    after = next_round_scale(current, clipped=0, quantised=0, aggregate_abs_max=abs_max)

    assert after.clip == 0.1


def test_bad_rule_constants_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        ClipRule(growth=1.0)
    with pytest.raises(ConfigError):
        initial_round_scale(0, 1e-3)


def test_the_clip_never_exceeds_max_clip() -> None:
    rule = ClipRule(max_clip=0.15)
    current = FixedPointScale(clip=0.1)

    grown = next_round_scale(
        current, clipped=900, quantised=1_000, aggregate_abs_max=5.0, rule=rule
    )

    assert grown.clip == pytest.approx(0.15)
