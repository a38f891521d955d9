"""The round engine's stages on their own: which Accumulator, what it aggregates.

Plain Python with real tensors; the stage settings come from the config as
`fedgrpc serve` gives them, plugins as the Python API gives them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedgrpc.aggregate import SpoolAccumulator, StreamingSum
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.records import Outcome
from fedgrpc.coordinator.rounds.registry import ClientRegistry
from fedgrpc.coordinator.strategy.wiring import NO_PLUGINS, StagePlugins
from fedgrpc.errors import ConfigError
from fedgrpc.sim.launcher import SimulationConfig, _coordinator_config
from tests.unit.coordinator.test_round_engine import SPEC, _close, _commit, _header


def _engine(
    tmp_path: Path, plugins: StagePlugins = NO_PLUGINS, **settings: object
) -> tuple[RoundEngine, ClientRegistry]:
    config = CoordinatorConfig(
        min_clients=1,
        outer_optimizer="fedavg",
        spool_dir=str(tmp_path / "spool"),
    ).replace(**settings)
    registry = ClientRegistry(max_clients=8)
    engine = RoundEngine(config, registry, plugins=plugins)
    engine.model.adopt_spec(SPEC)
    return engine, registry


class Federation:
    """An engine, its registry, and client ids by short name."""

    def __init__(self, tmp_path: Path, names: str, **settings: object) -> None:
        self.engine, self.registry = _engine(tmp_path, **settings)  # type: ignore[arg-type]
        self.ids = {n: self.registry.add(n, 0.0).client_id for n in names}
        self.commit("a", 0.0, 0, 0, initial=True)

    def commit(
        self, name: str, value: float, round_id: int, base: int, initial: bool = False
    ) -> None:
        values = torch.full((4,), value)
        _commit(self.engine, self.registry, self.ids[name], values, round_id, base,
                initial)  # fmt: skip


def test_the_mean_streams_into_one_reused_sum_buffer(tmp_path: Path) -> None:
    fed = Federation(tmp_path, "a")
    engine = fed.engine
    fed.commit("a", 1.0, 1, 0)
    assert engine.current is not None
    assert isinstance(engine.current.total, StreamingSum)
    buffer = engine.current.total.sum_tensor()
    assert _close(engine) is Outcome.APPLIED
    torch.testing.assert_close(engine.model.master, -torch.ones(4))
    fed.commit("a", 1.0, 2, 1)
    assert engine.current.total.sum_tensor() is buffer  # no new model-sized buffer


def test_a_median_spools_and_a_broken_push_leaves_the_round_standing(
    tmp_path: Path,
) -> None:
    fed = Federation(tmp_path, "abc", aggregator="median")
    engine, b = fed.engine, fed.registry.get(fed.ids["b"])
    assert b is not None
    broken = engine.admit(b, _header(b.client_id, 1, 0))
    engine.add_chunk(broken, 0, np.full(2, 9.0, dtype=np.float32))
    assert isinstance(engine.current.total, SpoolAccumulator)  # type: ignore[union-attr]
    assert engine.abandon(broken, "stream reset") is False  # not voided
    for name, value in (("a", 1.0), ("b", 2.0), ("c", 100.0)):
        fed.commit(name, value, 1, 0)
    assert _close(engine) is Outcome.APPLIED
    torch.testing.assert_close(engine.model.master, torch.full((4,), -2.0))
    assert not list((tmp_path / "spool").glob("run-*/round-*"))  # files deleted
    engine.stages.close()
    assert not list((tmp_path / "spool").glob("run-*"))


def test_a_trimmed_mean_reads_its_beta_from_the_config(tmp_path: Path) -> None:
    fed = Federation(
        tmp_path, "abcd", aggregator="trimmed_mean", trimmed_mean_beta=0.25,
        min_clients=4,
    )  # fmt: skip
    engine = fed.engine
    for name, value in (("a", -50.0), ("b", 1.0), ("c", 3.0), ("d", 80.0)):
        fed.commit(name, value, 1, 0)
    assert _close(engine) is Outcome.APPLIED
    # beta 0.25 of 4 drops one from each side: mean(1, 3) = 2.
    torch.testing.assert_close(engine.model.master, torch.full((4,), -2.0))


class DoubleMean:
    name = "double_mean"
    needs = "sum"

    def aggregate(self, held: object, out: torch.Tensor) -> None:
        from fedgrpc.aggregate import WeightedMean

        WeightedMean().aggregate(held, out)  # type: ignore[arg-type]
        out.mul_(2.0)


def test_a_module_class_aggregator_from_the_config_is_used(tmp_path: Path) -> None:
    fed = Federation(tmp_path, "a", aggregator=f"{__name__}:DoubleMean")
    engine = fed.engine
    assert engine.stages.aggregator.name == "double_mean"
    fed.commit("a", 1.0, 1, 0)
    assert _close(engine) is Outcome.APPLIED
    torch.testing.assert_close(engine.model.master, torch.full((4,), -2.0))


def test_an_api_object_wins_over_the_config_name(tmp_path: Path) -> None:
    engine, _ = _engine(tmp_path, StagePlugins(aggregator=DoubleMean()))
    assert engine.stages.aggregator.name == "double_mean"


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"trimmed_mean_beta": 0.2}, "trimmed_mean_beta"),
        ({"aggregator": "bulyan"}, "aggregator='bulyan' is invalid"),
        ({"krum_f": 1}, "krum_f"),
        ({"norm_bound": 0.0}, "norm_bound"),
        ({"accumulator": "ram"}, "accumulator='ram' is invalid"),
        ({"outer_optimizer_params": {"lr": 1}}, "outer_optimizer_params"),
        ({"outer_optimizer": "adam"}, "package.module:Class"),
    ],
)
def test_bad_stage_settings_are_refused_naming_the_setting(
    settings: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        CoordinatorConfig(**settings)  # type: ignore[arg-type]


def test_a_plugin_missing_a_member_is_refused_when_the_engine_is_built(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="lacks"):
        _engine(tmp_path, outer_optimizer=f"{__name__}:DoubleMean")


def test_simulate_passes_the_stage_settings_to_its_coordinator(
    tmp_path: Path,
) -> None:
    init_model = tmp_path / "init.safetensors"  # only its existence is checked here
    init_model.touch()
    config = _coordinator_config(
        SimulationConfig(aggregator="trimmed_mean", trimmed_mean_beta=0.2), init_model
    )
    assert (config.aggregator, config.trimmed_mean_beta) == ("trimmed_mean", 0.2)
