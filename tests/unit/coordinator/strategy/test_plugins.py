"""A user's Aggregator or OuterOptimizer from `module:Class`, checked at start."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgrpc.aggregate import SpoolAccumulator, StreamingSum, TrimmedMean, WeightedMean
from fedgrpc.coordinator.strategy import load_aggregator, load_outer_optimizer
from fedgrpc.errors import ConfigError
from fedgrpc.optim import FedAvgOuterOptimizer

PLUGIN = textwrap.dedent(
    '''
    import torch

    class ScaledMean:
        """Weighted mean times a factor: a real user-written Aggregator."""

        def __init__(self, factor=1.0):
            if factor <= 0:
                raise ValueError("factor must be > 0")
            self.factor = factor

        name = "scaled_mean"
        needs = "sum"

        def aggregate(self, held, out):
            torch.div(held.sum_tensor(), held.total_weight / self.factor, out=out)

    class HalfStep:
        """theta <- theta - lr/2 * g: a real user-written OuterOptimizer."""

        def __init__(self, lr=1.0):
            self.lr = lr

        @property
        def name(self):
            return "half_step"

        def step(self, params, pseudo_gradient):
            params.add_(pseudo_gradient, alpha=-self.lr / 2)

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    class NoAggregate:
        name = "broken"
        needs = "sum"

    class BadNeeds:
        name = "bad"
        needs = "everything"

        def aggregate(self, held, out):
            pass

    class Nested:
        Inner = ScaledMean

    def make_scaled(factor=2.0):
        return ScaledMean(factor)

    NOT_A_CLASS = 42
    '''
)


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real module on sys.path; yields its (unique) name."""
    name = f"user_stages_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    (tmp_path / "raises_on_import.py").write_text(
        "raise RuntimeError('boom at import')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for module in (name, "raises_on_import"):
        sys.modules.pop(module, None)


def _held_sum() -> StreamingSum:
    total = StreamingSum(torch.zeros(4))
    total.add_values("a", 0, np.full(4, 6.0, np.float32), 2.0, np.empty(4, np.float32))
    total.commit_update("a", 2.0)
    return total


def test_a_module_class_from_the_toml_is_built_with_its_parameters(plugin: str) -> None:
    aggregator = load_aggregator(f"{plugin}:ScaledMean", params={"factor": 0.5})
    out = torch.empty(4)

    aggregator.aggregate(_held_sum().held(), out)

    assert aggregator.name == "scaled_mean"
    assert torch.all(out == 3.0)  # mean 6, times 0.5


def test_dotted_attributes_and_factories_resolve(plugin: str) -> None:
    assert load_aggregator(f"{plugin}:Nested.Inner").name == "scaled_mean"
    assert load_aggregator(f"{plugin}:make_scaled").factor == 2.0  # type: ignore[attr-defined]


def test_a_user_outer_optimizer_plugs_in_and_steps(plugin: str) -> None:
    optimizer = load_outer_optimizer(f"{plugin}:HalfStep", params={"lr": 1.0})
    params, grad = torch.ones(3), torch.full((3,), 2.0)

    optimizer.step(params, grad)

    assert optimizer.name == "half_step"
    assert torch.all(params == 0.0)


def test_python_api_objects_classes_and_built_in_names_are_accepted() -> None:
    mean = WeightedMean()

    assert load_aggregator(mean) is mean
    assert load_aggregator(TrimmedMean, params={"beta": 0.2}).beta == 0.2  # type: ignore[attr-defined]
    assert load_aggregator("median").needs == "every_update"
    optimizer = FedAvgOuterOptimizer(lr=0.5)
    assert load_outer_optimizer(optimizer) is optimizer


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("no_such_module_xyz:Thing", "module 'no_such_module_xyz' was not found"),
        (
            "raises_on_import:Thing",
            "importing 'raises_on_import' failed with RuntimeError",
        ),
        ("{plugin}:Missing", "has no attribute 'Missing'"),
        ("{plugin}:Nested.Missing", "'{plugin}.Nested' has no attribute 'Missing'"),
        ("{plugin}:NOT_A_CLASS", "is an object of type int, not a class"),
        ("{plugin}:NoAggregate", "lacks aggregate"),
        ("{plugin}:BadNeeds", "its `needs` is 'everything'"),
        ("{plugin}:", "not a plugin reference"),
        (":Thing", "not a plugin reference"),
        ("bulyan", "'bulyan' is unknown"),
    ],
)
def test_bad_aggregator_settings_fail_at_start_naming_setting_and_value(
    plugin: str, value: str, message: str
) -> None:
    value, message = value.format(plugin=plugin), message.format(plugin=plugin)

    with pytest.raises(ConfigError) as caught:
        load_aggregator(value)

    assert message in str(caught.value)
    assert str(caught.value).startswith("aggregator=")


def test_a_failing_constructor_is_a_config_error_naming_the_parameters(
    plugin: str,
) -> None:
    with pytest.raises(ConfigError, match=r"factor.*ValueError: factor must be > 0"):
        load_aggregator(f"{plugin}:ScaledMean", params={"factor": -1})
    with pytest.raises(ConfigError, match="unexpected keyword argument 'speed'"):
        load_aggregator(f"{plugin}:ScaledMean", params={"speed": 3})


def test_parameters_for_a_ready_instance_are_refused() -> None:
    with pytest.raises(ConfigError, match="is an instance, not a class"):
        load_aggregator(WeightedMean(), params={"block_bytes": 1})


def test_outer_optimizer_plugins_need_every_protocol_member(plugin: str) -> None:
    with pytest.raises(ConfigError, match=r"outer_optimizer=.*lacks step, state_dict"):
        load_outer_optimizer(f"{plugin}:ScaledMean")
    with pytest.raises(ConfigError, match="build_outer_optimizer"):
        load_outer_optimizer("nesterov")


def test_a_plugin_aggregator_needing_every_update_reads_a_spool(
    plugin: str, tmp_path: Path
) -> None:
    spool = SpoolAccumulator(tmp_path / "round", 4, 2)
    spool.add_values("a", 0, np.full(4, 5.0, np.float32), 1.0, np.empty(4, np.float32))
    spool.commit_update("a", 1.0)
    median = load_aggregator("median")
    out = torch.empty(4)

    median.aggregate(spool.held(), out)

    assert torch.all(out == 5.0)
    spool.discard()
