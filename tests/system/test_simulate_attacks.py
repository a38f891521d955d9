"""`fedgrpc simulate --attack`: Byzantine client processes, end to end, small and fast.

Attackers are ordinary simulated clients (real processes, real gRPC, signed
updates) whose pseudo-gradient an `update_transform` rewrites before it is
signed, or whose training data is poisoned. These runs check that their
updates are verified and counted like anyone's, that the summary says who
attacked, and that the seed alone decides who does and what comes out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FEDGRPC = Path(sys.executable).with_name("fedgrpc")
pytestmark = pytest.mark.system
TINY = ["--clients", "4", "--rounds", "2", "--inner-steps", "3",
        "--corpus-bytes", "200000", "--eval-batches", "2",
        "--json", "--no-progress"]  # fmt: skip


def _simulate(*flags: str) -> tuple[dict[str, Any], str]:
    result = subprocess.run(
        [str(FEDGRPC), "simulate", *TINY, *flags],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary, result.stderr


@pytest.fixture(scope="module")
def signflip_run() -> tuple[dict[str, Any], str]:
    return _simulate(
        "--aggregator", "median", "--attack", "signflip:0.5", "--seed", "3"
    )


def test_signflip_attackers_send_updates_the_coordinator_verifies_and_counts(
    signflip_run: tuple[dict[str, Any], str],
) -> None:
    summary, table = signflip_run
    assert summary["attack"]["specs"] == ["signflip:0.5"]
    attackers = summary["attack"]["attackers"]
    assert len(attackers) == 2
    # Every round averaged all four signed updates, the attackers' included,
    # and each attacker saw both of its updates applied.
    assert summary["rounds"] == summary["rounds_applied"] == 2
    assert summary["updates_per_round"] == [4, 4]
    by_index = {p["index"]: p for p in summary["participants"]}
    assert {i for i, p in by_index.items() if p["attack"]} == set(attackers)
    assert all(p["updates_applied"] == 2 for p in by_index.values())
    assert len({p["client_id"] for p in by_index.values()}) == 4
    assert summary["attack"]["backdoor_success"] is None
    assert summary["attack"]["quarantine"] is None
    for index in attackers:
        assert f"attacker {index}" in table


def test_the_same_seed_picks_the_same_attackers_and_reaches_the_same_loss(
    signflip_run: tuple[dict[str, Any], str],
) -> None:
    first, _ = signflip_run
    again, _ = _simulate(
        "--aggregator", "median", "--attack", "signflip:0.5", "--seed", "3"
    )
    assert again["attack"]["attackers"] == first["attack"]["attackers"]
    assert again["final_val_loss"] == pytest.approx(first["final_val_loss"], abs=1e-6)
    assert again["final_train_loss"] == pytest.approx(
        first["final_train_loss"], abs=1e-6
    )


def test_colluding_alie_and_a_backdoor_run_in_one_federation() -> None:
    summary, table = _simulate(
        "--aggregator", "median", "--attack", "alie:0.5", "--attack", "backdoor:0.25"
    )
    assert summary["updates_per_round"] == [4, 4]
    kinds = sorted(p["attack"] for p in summary["participants"] if p["attack"])
    assert kinds == ["alie:0.5", "alie:0.5", "backdoor:0.25"]
    # n = 4, f = 2: s = floor(4/2 + 1) - 2 = 1, z_max = Phi^-1(3/4).
    assert summary["attack"]["alie_z"] == pytest.approx(0.674490, abs=1e-6)
    assert 0.0 <= summary["attack"]["backdoor_success"] <= 1.0
    assert "backdoor success" in table


def test_trust_quarantines_a_scaling_attacker_and_the_honest_rounds_go_on() -> None:
    summary, table = _simulate(
        "--rounds", "6", "--aggregator", "median", "--attack", "scaling:0.25",
        "--trust", "on", "--seed", "0",
    )  # fmt: skip
    (attacker,) = summary["attack"]["attackers"]
    figures = summary["attack"]["quarantine"]
    rows = {row["index"]: row for row in figures["clients"]}
    assert rows[attacker]["attacker"] is True
    assert rows[attacker]["trust_state"] == "quarantined"
    first = rows[attacker]["first_quarantined_round"]
    assert first is not None
    assert 1 <= first <= 5
    assert rows[attacker]["excluded_until_round"] > 6  # still out at the end
    honest = [row for index, row in rows.items() if index != attacker]
    assert len(honest) == 3
    assert all(row["first_quarantined_round"] is None for row in honest)
    assert all(row["trust_state"] in ("trusted", "soft") for row in honest)
    assert (figures["precision"], figures["recall"]) == (1.0, 1.0)
    # Every round applied: after the quarantine the quorum (2 of 4) is met
    # by the three honest clients, instead of each round timing out.
    assert summary["rounds"] == summary["rounds_applied"] == 6
    assert summary["updates_per_round"][first:] == [3] * (6 - first)
    # The attacker's process ran on, refused, and finished with the run.
    by_index = {p["index"]: p for p in summary["participants"]}
    assert by_index[attacker]["updates_applied"] == first
    assert all(by_index[i]["updates_applied"] == 6 for i in by_index if i != attacker)
    assert "quarantined by round 5" in table
    assert "precision 1.00, recall 1.00" in table


def test_an_attack_with_no_client_to_run_it_is_refused_before_anything_starts() -> None:
    result = subprocess.run(
        [str(FEDGRPC), "simulate", "--clients", "4", "--attack", "ipm:0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "0.1 of 4 clients is no client" in result.stderr
