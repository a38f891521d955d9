"""The round sum goes to disk only under the lean settings, and only when safe.

Whatever needs the whole mean in RAM (a robust rule, a norm bound, central
DP, trust scores, a compressed downlink, fragments, a tree leaf, secure
aggregation) keeps today's in-RAM sum; the settings decide it at start.
"""

from __future__ import annotations

from typing import Any

import pytest

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.strategy.wiring import build_round_stages

LEAN = {"staging_memory_mb": 0, "outer_state_on_disk": True, "listen": "127.0.0.1:0"}


def _sum_on_disk(**settings: Any) -> bool:
    with build_round_stages(CoordinatorConfig(**{**LEAN, **settings})) as stages:
        return stages.sum_on_disk


def test_the_lean_settings_keep_the_sum_on_disk() -> None:
    assert _sum_on_disk() is True
    assert _sum_on_disk(round_mode="buffered_async") is True


@pytest.mark.parametrize(
    "settings",
    [
        {"staging_memory_mb": 1},
        {"outer_state_on_disk": False},
        {"aggregator": "median"},
        {"aggregator": "trimmed_mean"},
        {"norm_bound": 1.0},
        {"privacy": "central", "dp_clip_norm": 1.0, "dp_noise_multiplier": 1.0},
        {"trust": "on"},
        {"downlink_codec": "topk:0.01"},
        {"round_mode": "streaming", "fragments": 2},
        {"upstream": "127.0.0.1:1"},
        {"secure_aggregation": True, "codec": "dense:int8", "min_clients": 3},
    ],
    ids=lambda settings: ",".join(settings),
)
def test_whatever_needs_the_whole_mean_keeps_the_sum_in_ram(
    settings: dict[str, Any],
) -> None:
    assert _sum_on_disk(**settings) is False
