"""`simulate --trust`: its flags, its coordinator's quorum, its quarantine figures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedgrpc.cli import build_parser
from fedgrpc.domain.status import ClientSummary, CoordinatorStatus
from fedgrpc.sim.config import SimulationConfig, coordinator_config
from fedgrpc.sim.quarantine import quarantine_figures
from fedgrpc.sim.report import format_summary
from fedgrpc.sim.summary import AttackFigures, Participant, SimulationSummary


@pytest.fixture
def init_model(tmp_path: Path) -> Path:
    path = tmp_path / "init.safetensors"  # only its existence is checked here
    path.touch()
    return path


def test_simulate_takes_the_trust_flags_of_serve() -> None:
    args = build_parser().parse_args(
        ["simulate", "--trust", "on", "--trust-decay", "0.5",
         "--trust-soft-threshold", "0.6", "--trust-hard-threshold", "0.3",
         "--trust-quarantine-rounds", "2"]
    )  # fmt: skip
    assert (args.trust, args.trust_decay, args.trust_quarantine_rounds) == (
        "on",
        0.5,
        2,
    )
    assert (args.trust_soft_threshold, args.trust_hard_threshold) == (0.6, 0.3)


def test_trust_settings_reach_the_simulated_coordinator(init_model: Path) -> None:
    config = coordinator_config(
        SimulationConfig(trust="on", trust_decay=0.5, trust_quarantine_rounds=2),
        init_model,
    )
    assert (config.trust, config.trust_decay, config.trust_quarantine_rounds) == (
        "on", 0.5, 2,
    )  # fmt: skip
    # Unset ones keep the coordinator's defaults.
    plain = coordinator_config(SimulationConfig(), init_model)
    assert config.trust_hard_threshold == plain.trust_hard_threshold
    assert plain.trust == "off"


def test_without_trust_every_client_is_the_quorum(init_model: Path) -> None:
    assert coordinator_config(SimulationConfig(clients=5), init_model).min_clients == 5


@pytest.mark.parametrize(("clients", "quorum"), [(1, 1), (4, 2), (5, 3), (10, 5)])
def test_with_trust_the_quorum_is_half_so_a_quarantined_client_stalls_nothing(
    init_model: Path, clients: int, quorum: int
) -> None:
    simulation = SimulationConfig(clients=clients, trust="on")
    assert coordinator_config(simulation, init_model).min_clients == quorum


def test_with_trust_and_selection_the_quorum_never_exceeds_the_selection(
    init_model: Path,
) -> None:
    simulation = SimulationConfig(
        clients=10, trust="on", selection="random", clients_per_round=3
    )
    assert coordinator_config(simulation, init_model).min_clients == 3


def _client(client_id: str, **trust: object) -> ClientSummary:
    row = ClientSummary(client_id, client_id, True, 1, 1, 1, 1.0)
    fields = {"trust_state": "trusted"} | trust
    return dataclasses.replace(row, **fields)  # type: ignore[arg-type]


def _status(*clients: ClientSummary) -> CoordinatorStatus:
    return CoordinatorStatus("run", "finished", 8, 8, 10, clients, (), 0, 0, 1.0)


JOINED = {0: "c1", 1: "c2", 2: "c3", 3: "c4"}


def test_precision_and_recall_count_quarantines_by_round_five_only() -> None:
    status = _status(
        _client("c1"),
        _client("c2", trust_state="quarantined", first_quarantined_round=3),
        _client("c3", trust_state="quarantined", first_quarantined_round=2,
                trust_score=0.1, excluded_until_round=8),
        _client("c4", trust_state="quarantined", first_quarantined_round=6),
    )  # fmt: skip
    figures = quarantine_figures(status, JOINED, attackers={2, 3})
    # Caught by round 5: 1 (honest, a false positive) and 2; 3 came too late.
    assert figures["caught"] == [1, 2]
    assert figures["precision"] == pytest.approx(0.5)
    assert figures["recall"] == pytest.approx(0.5)
    row = figures["clients"][2]
    assert row == {
        "index": 2, "attacker": True, "trust_score": 0.1,
        "trust_state": "quarantined", "first_quarantined_round": 2,
        "excluded_until_round": 8,
    }  # fmt: skip
    assert figures["clients"][0]["first_quarantined_round"] is None


def test_precision_is_undefined_when_nobody_is_quarantined() -> None:
    figures = quarantine_figures(_status(_client("c1")), {0: "c1", 1: ""}, {1})
    assert figures["precision"] is None
    assert figures["recall"] == 0.0
    # A participant that never joined reads as never scored.
    assert figures["clients"][1]["trust_score"] == 1.0


def test_the_table_shows_the_catch_and_the_attackers_trust() -> None:
    status = _status(
        _client("c1"), _client("c2"), _client("c3"),
        _client("c4", trust_state="quarantined", first_quarantined_round=4,
                trust_score=0.138),
    )  # fmt: skip
    summary = SimulationSummary(
        clients=4, num_parameters=10, rounds=[], initial_val_loss=1.0,
        final_val_loss=1.0, bytes_up=0, bytes_down=0, wall_s=1.0,
        participants=[Participant(i, JOINED[i], "scaling:0.25" if i == 3 else None, 1)
                      for i in range(4)],
        attack=AttackFigures(("scaling:0.25",), None, None,
                             quarantine_figures(status, JOINED, {3})),
    )  # fmt: skip
    table = format_summary(summary)
    assert "precision 1.00, recall 1.00" in table
    assert "0.138 quarantined (attacker), quarantined in round 4" in table
    assert "trust 0" not in table  # honest and never quarantined: not listed
    assert summary.as_dict()["attack"]["quarantine"]["caught"] == [3]
