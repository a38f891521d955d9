"""The run's privacy budget: releases per round, refusals, restore, and reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedgrpc.cli_ops import format_status
from fedgrpc.client.admin import CoordinatorStatus, PrivacyView, RoundRow
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.budget import PrivacyBudget
from fedgrpc.coordinator.rounds.records import OpenRound
from fedgrpc.coordinator.strategy.dp_stage import build_privacy_stage
from fedgrpc.errors import ConfigError
from fedgrpc.privacy import PrivacyLedger, Release
from fedgrpc.privacy.central import CentralGaussian
from fedgrpc.sim.config import SimulationConfig, coordinator_config
from fedgrpc.sim.report import format_summary
from fedgrpc.sim.summary import PrivacyFigures, RoundFigures, SimulationSummary

DELTA = 1e-5


def _config(**overrides: object) -> CoordinatorConfig:
    settings: dict[str, object] = {
        "privacy": "central", "dp_clip_norm": 1.0, "dp_noise_multiplier": 1.0,
        "weighting": "equal", **overrides,
    }  # fmt: skip
    return CoordinatorConfig(**settings)  # type: ignore[arg-type]


def _budget(config: CoordinatorConfig) -> PrivacyBudget:
    return PrivacyBudget(config, build_privacy_stage(config, "streaming_sum"))


def _round(
    contributors: int, selected: int | None = None, population: int = 0
) -> OpenRound:
    current = OpenRound(1, 0, 0.0)
    current.contributors = {f"c{i}" for i in range(contributors)}
    if selected is not None:
        current.selected = tuple(f"c{i}" for i in range(selected))
        current.population = population
    return current


def test_a_round_of_every_client_is_the_plain_gaussian() -> None:
    budget = _budget(_config())
    assert budget.release_of(_round(3)) == Release(1.0)


def test_random_selection_releases_a_fixed_sample_under_replace_one() -> None:
    budget = _budget(_config(selection="random", clients_per_round=2, min_clients=2))
    release = budget.release_of(_round(2, selected=2, population=10))
    assert release == Release(0.5, 0.2, sampling="fixed", population=10, sample_size=2)
    assert budget.ledger is not None
    assert budget.ledger.neighbouring == "replace_one"
    budget.noise(torch.zeros(8), 2, release)  # the library accounts it
    unsampled = PrivacyLedger("rdp", "replace_one", [Release(0.5)]).epsilon(DELTA)
    assert 0 < budget.epsilon < unsampled


def test_a_round_past_max_epsilon_is_refused_and_says_why() -> None:
    one = PrivacyLedger(releases=[Release(1.0)]).epsilon(DELTA)
    budget = _budget(_config(max_epsilon=one * 1.2))
    budget.noise(torch.zeros(4), 2, Release(1.0))
    assert budget.refusal(Release(1.0), 2) is not None
    assert budget.exhausted
    assert "max_epsilon" in (budget.refusal(Release(1.0), 2) or "")
    assert budget.epsilon == pytest.approx(one)


def test_state_round_trips_through_json_to_the_same_epsilon_and_s() -> None:
    config = _config(dp_adaptive_clip_quantile=0.5, dp_clip_count_noise=2.0)
    budget = _budget(config)
    budget.seed = 0
    for _ in range(3):
        for _ in range(4):
            budget.stage.clip_update(torch.full((4,), 5.0))
        budget.noise(torch.zeros(4), 4, Release(1.0))
    state = json.loads(json.dumps(budget.state_dict()))
    restored = _budget(config)
    restored.load_state_dict(state)
    assert restored.epsilon == budget.epsilon > 0
    assert isinstance(restored.stage, CentralGaussian)
    assert restored.clip_norm == budget.clip_norm != 1.0  # S moved and came back
    assert restored.ledger is not None
    assert budget.ledger is not None
    assert restored.ledger.releases == budget.ledger.releases


def test_a_checkpoint_of_other_adjacency_is_refused() -> None:
    state = _budget(_config()).state_dict()
    sampled = _budget(_config(selection="random", clients_per_round=2, min_clients=2))
    with pytest.raises(ConfigError, match="selection"):
        sampled.load_state_dict(state)


def test_status_shows_epsilon_the_budget_left_and_the_mechanism() -> None:
    status = CoordinatorStatus(
        run_id="r", phase="collecting", round_id=3, model_version=2,
        num_parameters=10, min_clients=1, inner_steps=5, uptime_s=1.0,
        bytes_received=0, bytes_sent=0, clients=[],
        recent_rounds=[RoundRow(2, "skipped", 2, 1.0, 0.5, 10, privacy_epsilon=1.5,
                                privacy_exhausted=True)],
        privacy=PrivacyView("central", 1.5, 1e-5, 4.0, 0.5, 1.1,
                            "rdp/add_or_remove_one"),
    )  # fmt: skip
    line = next(x for x in format_status("t", status).splitlines() if "privacy" in x)
    assert "epsilon 1.5 of max 4 (2.5 left) at delta 1e-05" in line
    assert "S=0.5" in line
    assert "z=1.1" in line
    assert "rdp/add_or_remove_one" in line
    table = format_status("t", status).splitlines()
    assert table[-2].split()[-1] == "epsilon"
    assert table[-1].endswith("1.5 refused")


def test_simulate_passes_privacy_through_with_equal_weights_and_reports_it() -> None:
    sim = SimulationConfig(privacy={"privacy": "central", "dp_clip_norm": 1.0,
                                    "dp_noise_multiplier": 1.0})  # fmt: skip
    config = coordinator_config(sim, init_model=Path(__file__))
    assert (config.privacy, config.weighting) == ("central", "equal")
    summary = SimulationSummary(
        clients=2, num_parameters=10,
        rounds=[RoundFigures(1, True, 1.0, 1.0, 2, epsilon=0.7)],
        initial_val_loss=2.0, final_val_loss=1.0, bytes_up=0, bytes_down=0,
        wall_s=1.0,
        privacy=PrivacyFigures("central", 0.7, 1e-5, 1.0, 1.0, 1.0, exhausted=True),
    )  # fmt: skip
    assert summary.as_dict()["privacy"]["epsilon"] == 0.7
    assert summary.as_dict()["epsilon_per_round"] == [0.7]
    assert "0.7 of max 1 (1e-05) (stopped on its budget)" in format_summary(summary)
