"""Outer-optimizer settings: names, defaults per optimizer, refusals, TOML, flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedgrpc.cli import build_parser
from fedgrpc.config import OUTER_OPTIMIZERS, CoordinatorConfig
from fedgrpc.coordinator.rounds.global_model import GlobalModel
from fedgrpc.errors import ConfigError

NEW = ("fedavgm", "fedadagrad", "fedadam", "fedyogi")


def _config(**settings: object) -> CoordinatorConfig:
    return CoordinatorConfig(open_enrollment=True, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "lr", "momentum"),
    [
        ("fedavgm", 0.7, 0.9),
        ("fedadagrad", 0.1, 0.0),
        ("fedadam", 0.01, 0.0),
        ("fedyogi", 0.01, 0.0),
        ("nesterov", 0.7, 0.9),
        ("fedavg", 1.0, 0.0),
    ],
)
def test_each_optimizer_gets_its_own_defaults(
    name: str, lr: float, momentum: float
) -> None:
    config = _config(outer_optimizer=name)

    assert set(NEW) <= set(OUTER_OPTIMIZERS)
    assert config.resolved_outer_lr == lr
    assert config.resolved_outer_momentum == momentum
    assert (config.resolved_outer_beta1, config.resolved_outer_beta2) == (0.9, 0.99)
    assert config.resolved_outer_tau == 1e-3


def test_coordinator_builds_the_configured_adaptive_optimizer() -> None:
    config = _config(
        outer_optimizer="fedyogi", outer_lr=0.02, outer_beta1=0.5, outer_beta2=0.9,
        outer_tau=1e-4,
    )  # fmt: skip

    optimizer = GlobalModel(config, clock=lambda: 0.0).optimizer

    assert optimizer.name == "fedyogi"
    settings = (optimizer.lr, optimizer.beta1, optimizer.beta2, optimizer.tau)  # type: ignore[attr-defined]
    assert settings == (0.02, 0.5, 0.9, 1e-4)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"outer_optimizer": "nesterov", "outer_beta1": 0.9},
         r"outer_beta1=0.9 is invalid: expected unset with outer_optimizer "
         r"'nesterov': it applies to fedadagrad, fedadam, fedyogi"),
        ({"outer_optimizer": "fedadagrad", "outer_beta2": 0.9},
         "outer_beta2=0.9 is invalid: expected unset with outer_optimizer "
         "'fedadagrad': it applies to fedadam, fedyogi"),
        ({"outer_optimizer": "fedavg", "outer_tau": 0.1}, "outer_tau=0.1 is invalid"),
        ({"outer_optimizer": "fedadam", "outer_momentum": 0.9},
         "outer_momentum=0.9 is invalid: expected unset or 0 for fedadam, whose "
         "momentum is outer_beta1"),
        ({"outer_optimizer": "fedadam", "outer_beta1": 1.0},
         r"outer_beta1=1.0 is invalid: expected in \[0, 1\)"),
        ({"outer_optimizer": "fedyogi", "outer_beta2": -0.5},
         r"outer_beta2=-0.5 is invalid: expected in \[0, 1\)"),
        ({"outer_optimizer": "fedadam", "outer_tau": 0.0},
         "outer_tau=0.0 is invalid: expected a finite number > 0"),
        ({"outer_optimizer": "fedyogi", "outer_tau": float("inf")},
         "outer_tau=inf is invalid"),
        ({"outer_optimizer": "fedavgm", "outer_momentum": 1.0},
         "outer_momentum=1.0 is invalid"),
        ({"outer_optimizer": "fedadam", "outer_lr": -0.01}, "outer_lr=-0.01"),
    ],
)  # fmt: skip
def test_settings_an_optimizer_does_not_read_or_out_of_range_are_refused(
    settings: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        _config(**settings)


def test_toml_keys_set_the_adaptive_settings_and_flags_override_them(
    tmp_path: Path,
) -> None:
    # Arrange
    path = tmp_path / "c.toml"
    path.write_text(
        "[coordinator]\nopen_enrollment = true\nouter_optimizer = 'fedadam'\n"
        "outer_beta1 = 0.8\nouter_beta2 = 0.999\nouter_tau = 0.01\n"
    )

    # Act: what `fedgrpc serve --config c.toml --outer-tau 1e-5` does.
    config = CoordinatorConfig.from_toml(path, outer_tau=1e-5)

    # Assert
    assert (config.outer_beta1, config.outer_beta2, config.outer_tau) == (
        0.8, 0.999, 1e-5,
    )  # fmt: skip


@pytest.mark.parametrize("command", ["serve", "simulate"])
def test_serve_and_simulate_take_the_adaptive_flags(command: str) -> None:
    args = build_parser().parse_args(
        [command, "--outer-optimizer", "fedyogi", "--outer-beta1", "0.5",
         "--outer-beta2", "0.9", "--outer-tau", "1e-4", "--outer-lr", "0.02"]
    )  # fmt: skip

    assert args.outer_optimizer == "fedyogi"
    assert (args.outer_beta1, args.outer_beta2, args.outer_tau) == (0.5, 0.9, 1e-4)
    assert args.outer_lr == 0.02


def test_simulation_config_carries_the_adaptive_settings_to_its_coordinator(
    tmp_path: Path,
) -> None:
    from fedgrpc.sim.config import SimulationConfig, coordinator_config
    from fedgrpc.sim.launcher import write_initial_model

    simulation = SimulationConfig(
        outer_optimizer="fedadam", outer_beta1=0.7, outer_beta2=0.95, outer_tau=1e-2
    )
    init_model = write_initial_model(simulation, tmp_path)

    config = coordinator_config(simulation, init_model)

    assert config.outer_optimizer == "fedadam"
    assert (config.outer_beta1, config.outer_beta2, config.outer_tau) == (
        0.7, 0.95, 1e-2,
    )  # fmt: skip
    # The coordinator, not the first client, brings the weights and ends the run.
    assert config.init_model == str(init_model)
    assert config.max_rounds == simulation.rounds


@pytest.mark.parametrize("name", OUTER_OPTIMIZERS)
def test_every_outer_optimizer_is_announced_to_clients_by_its_own_enum_value(
    name: str,
) -> None:
    from fedgrpc._proto.v1 import common_pb2
    from fedgrpc.wire.convert import round_config_to_proto

    announced = round_config_to_proto(_config(outer_optimizer=name))

    label = common_pb2.OuterOptimizer.Name(announced.outer_optimizer)
    assert label == f"OUTER_OPTIMIZER_{name.upper()}"
