"""The robust rules' settings reach the built stages; impossible ones are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedgrpc.aggregate import (
    CenteredClipping,
    GeometricMedian,
    HeldUpdates,
    Holding,
    MultiKrum,
    NormBounded,
    TrimmedMean,
    WeightedMean,
)
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.strategy.wiring import StagePlugins, build_round_stages
from fedgrpc.errors import ConfigError


def _stages(tmp_path: Path, **settings: object) -> object:
    config = CoordinatorConfig(spool_dir=str(tmp_path), **settings)  # type: ignore[arg-type]
    stages = build_round_stages(config)
    stages.close()
    return stages


def test_each_rule_gets_its_own_settings(tmp_path: Path) -> None:
    krum = _stages(tmp_path, aggregator="multi_krum", krum_f=2, multi_krum_m=3)
    rule = krum.aggregator  # type: ignore[attr-defined]
    assert isinstance(rule, MultiKrum)
    assert (rule.f, rule.m, rule.name) == (2, 3, "multi_krum")
    assert krum.accumulator == "spool"  # type: ignore[attr-defined]

    single = _stages(tmp_path, aggregator="krum", krum_f=1).aggregator  # type: ignore[attr-defined]
    assert isinstance(single, MultiKrum)
    assert (single.f, single.m, single.name) == (1, 1, "krum")

    geo = _stages(tmp_path, aggregator="geometric_median", geomedian_iters=4,
                  geomedian_eps=1e-3).aggregator  # type: ignore[attr-defined]  # fmt: skip
    assert isinstance(geo, GeometricMedian)
    assert (geo.iters, geo.eps) == (4, 1e-3)

    cc = _stages(tmp_path, aggregator="centered_clipping", clipping_tau=0.5,
                 clipping_iters=2).aggregator  # type: ignore[attr-defined]  # fmt: skip
    assert isinstance(cc, CenteredClipping)
    assert (cc.tau, cc.iters) == (0.5, 2)


def test_hybrid_takes_beta_and_the_bound_and_defaults_to_the_median_norm(
    tmp_path: Path,
) -> None:
    default = _stages(tmp_path, aggregator="hybrid").aggregator  # type: ignore[attr-defined]
    assert isinstance(default, NormBounded)
    assert (default.bound, default.multiple, default.name) == (None, 1.0, "hybrid")

    tuned = _stages(tmp_path, aggregator="hybrid", trimmed_mean_beta=0.2,
                    norm_bound=7.0).aggregator  # type: ignore[attr-defined]  # fmt: skip
    assert isinstance(tuned, NormBounded)
    assert (tuned.bound, tuned.multiple) == (7.0, None)
    assert isinstance(tuned.inner, TrimmedMean)
    assert tuned.inner.beta == 0.2


def test_a_norm_bound_wraps_the_mean_and_spools_its_updates(tmp_path: Path) -> None:
    stages = _stages(tmp_path, norm_bound_multiple=2.0)
    rule = stages.aggregator  # type: ignore[attr-defined]
    assert isinstance(rule, NormBounded)
    assert isinstance(rule.inner, WeightedMean)
    assert (rule.multiple, rule.name) == (2.0, "mean")
    assert stages.accumulator == "spool"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"aggregator": "geometric_median", "clipping_iters": 2}, "clipping_iters"),
        ({"aggregator": "krum", "krum_f": -1}, "krum_f"),
        ({"aggregator": "multi_krum", "multi_krum_m": 0}, "multi_krum_m"),
        ({"aggregator": "krum", "multi_krum_m": 2}, "multi_krum_m"),
        ({"aggregator": "geometric_median", "geomedian_eps": 0.0}, "geomedian_eps"),
        (
            {"aggregator": "centered_clipping", "clipping_tau": float("inf")},
            "clipping_tau",
        ),
        ({"aggregator": "krum", "krum_f": True}, "krum_f"),
        ({"norm_bound": -2.0}, "norm_bound"),
        ({"norm_bound": 1.0, "norm_bound_multiple": 1.0}, "norm_bound"),
    ],
)
def test_bad_robust_settings_are_refused_naming_the_setting(
    settings: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        CoordinatorConfig(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "settings",
    [{"aggregator": "krum"}, {"aggregator": "hybrid"}, {"norm_bound": 3.0},
     {"aggregator": "centered_clipping"}],
)  # fmt: skip
def test_secure_aggregation_refuses_them_pointing_to_the_client_bound(
    settings: dict[str, object],
) -> None:
    config = CoordinatorConfig(
        secure_aggregation=True, codec="dense:int8", min_clients=3,
        **settings,  # type: ignore[arg-type]
    )  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        build_round_stages(config)
    message = str(refused.value)
    assert "secure_aggregation = true" in message
    assert "ClientConfig(max_update_norm=" in message


class SumOnly:
    """A user's rule that reads only the sum."""

    name = "sum_only"

    @property
    def needs(self) -> Holding:
        return "sum"

    def aggregate(self, held: HeldUpdates, out: torch.Tensor) -> None:
        WeightedMean().aggregate(held, out)


def test_a_norm_bound_refuses_a_user_rule_that_reads_only_the_sum(
    tmp_path: Path,
) -> None:
    config = CoordinatorConfig(spool_dir=str(tmp_path), norm_bound=1.0)
    with pytest.raises(ConfigError, match="sum_only"):
        build_round_stages(config, StagePlugins(aggregator=SumOnly()))
