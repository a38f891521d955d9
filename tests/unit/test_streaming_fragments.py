"""Streaming DiLoCo's pieces alone: the fragment cuts, the per-fragment optimizer,
the settings' checks."""

from __future__ import annotations

import re

import pytest
import torch

from fedgrpc.config import CoordinatorConfig
from fedgrpc.domain.fragments import (
    byte_of_coordinate,
    fragment_of_version,
    split_fragments,
)
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.errors import ConfigError, InvalidUpdateError
from fedgrpc.optim import NesterovOuterOptimizer
from fedgrpc.optim.fragmented import FragmentedOptimizer


def _spec() -> ModelSpec:
    return ModelSpec(
        (
            TensorSpec("a", (5,), DType.FLOAT32),
            TensorSpec("b", (4,), DType.BFLOAT16),
            TensorSpec("c", (3,), DType.FLOAT64),
        )
    )


def test_fragments_are_equal_contiguous_and_map_to_native_bytes() -> None:
    spec = _spec()
    parts = split_fragments(spec, 3)
    assert [(f.coord_start, f.coord_stop) for f in parts] == [(0, 4), (4, 8), (8, 12)]
    # a: 4 bytes each; b: 2 bytes each from byte 20; c: 8 bytes each from 28.
    assert [(f.byte_start, f.byte_stop) for f in parts] == [(0, 16), (16, 26), (26, 52)]
    assert byte_of_coordinate(spec, 12) == spec.num_bytes == 52
    assert sum(f.num_bytes for f in parts) == spec.num_bytes
    assert [fragment_of_version(v, 3) for v in range(5)] == [0, 1, 2, 0, 1]
    with pytest.raises(ValueError, match="at least one parameter"):
        split_fragments(spec, 13)


def test_each_fragment_has_its_own_nesterov_state() -> None:
    torch.manual_seed(0)
    n, g0, g1 = 10, torch.randn(5), torch.randn(5)
    fragmented = FragmentedOptimizer(lambda: NesterovOuterOptimizer(0.7, 0.9), 2)
    params = torch.zeros(n)
    fragmented.step_fragment(0, params[:5], g0.clone())
    fragmented.step_fragment(0, params[:5], g0.clone())
    fragmented.step_fragment(1, params[5:], g1.clone())
    # The reference: two plain optimizers, each seeing only its slice.
    ref0, ref1 = NesterovOuterOptimizer(0.7, 0.9), NesterovOuterOptimizer(0.7, 0.9)
    expected = torch.zeros(n)
    ref0.step(expected[:5], g0.clone())
    ref0.step(expected[:5], g0.clone())
    ref1.step(expected[5:], g1.clone())
    assert torch.equal(params, expected)
    # State round-trips through the flat dict a checkpoint stores.
    state = fragmented.state_dict()
    assert state["fragments"] == 2
    assert state["fragment0.steps"] == 2
    again = FragmentedOptimizer(lambda: NesterovOuterOptimizer(0.7, 0.9), 2)
    again.load_state_dict(state)
    assert again.state_dict()["fragment1.steps"] == 1
    with pytest.raises(InvalidUpdateError, match="saved for 2 fragments"):
        FragmentedOptimizer(lambda: NesterovOuterOptimizer(), 3).load_state_dict(state)
    shared = NesterovOuterOptimizer()
    with pytest.raises(ConfigError, match="pass its class"):
        FragmentedOptimizer(lambda: shared, 2)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"fragments": 3}, "a divisor of inner_steps (8)"),
        ({"streaming_overlap_steps": 2}, "< inner_steps / fragments (2)"),
        ({"fragments": 1}, "2..64"),
        ({"streaming_mix": 1.5}, "0..1"),
        (
            {"secure_aggregation": True, "codec": "dense:int8"},
            "fragments synced in turn",
        ),
    ],
)
def test_streaming_settings_that_cannot_work_are_refused(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        CoordinatorConfig(round_mode="streaming", inner_steps=8, **settings)  # type: ignore[arg-type]
