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


def test_an_attack_with_no_client_to_run_it_is_refused_before_anything_starts() -> None:
    result = subprocess.run(
        [str(FEDGRPC), "simulate", "--clients", "4", "--attack", "ipm:0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "0.1 of 4 clients is no client" in result.stderr
