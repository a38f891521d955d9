"""`fedgrpc simulate --speeds` and `--crash-rate` end to end (real processes).

Slow clients really take longer per step, crashed clients really die
(`os._exit`, no goodbye) and come back as the same client, and the summary's
goodput says how much of the clients' compute reached applied updates.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedgrpc.sim.churn import planned_crashes

FEDGRPC = Path(sys.executable).with_name("fedgrpc")
pytestmark = pytest.mark.system
TINY = ("--rounds", "2", "--inner-steps", "5", "--corpus-bytes", "400000")


def _simulate(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FEDGRPC), "simulate", "--json", *flags],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def _by_index(summary: dict[str, Any], key: str) -> list[Any]:
    return [p[key] for p in summary["participants"]]


def test_a_client_at_speed_4_computes_about_four_times_as_long_and_waits_less() -> None:
    # Act: two clients, the second 4x slower.
    result = _simulate("--clients", "2", "--speeds", "1,4", "--no-progress", *TINY)

    # Assert
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rounds_applied"] == 2
    fast, slow = _by_index(summary, "compute_s")
    # Same steps, f = 4: ~4x the compute time (loose: a shared, noisy machine).
    assert 2.0 < slow / fast < 8.0
    assert _by_index(summary, "speed") == [1.0, 4.0]
    assert _by_index(summary, "samples")[0] == _by_index(summary, "samples")[1] > 0
    # Sync rounds: no compute is wasted, but the fast client mostly waits.
    assert summary["goodput"] == pytest.approx(1.0)
    busy_fast, busy_slow = _by_index(summary, "busy_fraction")
    assert 0 < busy_fast < busy_slow <= 1
    assert summary["crashes"] == 0
    assert "client 1                             speed x4" in result.stderr
    # Each evaluation on the time and token axes: a sync round's version
    # arrives after every client marked that round's tokens, so version k
    # sits at exactly k rounds' worth of all clients' tokens.
    evaluations = summary["evaluations"]
    per_round = summary["tokens"] / 2
    assert [e["tokens"] for e in evaluations] == [0, per_round, 2 * per_round]
    elapsed = [e["elapsed_s"] for e in evaluations]
    assert elapsed[0] == 0 < elapsed[1] < elapsed[2] <= summary["train_wall_s"]


def test_crashes_follow_the_seed_restart_as_the_same_client_and_cost_goodput() -> None:
    # Arrange: at P = 0.5 seed 0 would crash clients 0, 1, 2 [1, 0, 2] times;
    # --max-restarts 1 caps client 2 at one.
    seed, rate, bound = 0, 0.5, 1
    expected = [planned_crashes(seed, i, 2, rate, bound) for i in range(3)]
    assert expected == [1, 0, 1]
    assert planned_crashes(seed, 2, 2, rate, 10) == 2  # the bound is what stops it

    # Act (with the progress output, where crashes are announced)
    result = _simulate("--clients", "3", "--seed", str(seed), "--crash-rate",
                       str(rate), "--max-restarts", str(bound), *TINY)  # fmt: skip

    # Assert: the run finished every round with every client's update.
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rounds_applied"] == 2
    assert summary["updates_per_round"] == [3, 3]
    assert _by_index(summary, "crashes") == expected
    assert summary["crashes"] == 2
    assert _by_index(summary, "updates_applied") == [2, 2, 2]
    # Same key after a restart: the coordinator knew it (else the run fails).
    assert len(set(_by_index(summary, "client_id"))) == 3
    assert "client 0 crashed at sync point" in result.stderr
    assert "client 2 crashed at sync point" in result.stderr
    assert "client 1 crashed" not in result.stderr
    # A crashed round's compute is wasted; the others' all counted.
    goodput = _by_index(summary, "goodput")
    assert 0 < goodput[0] < 1
    assert 0 < goodput[2] < 1
    assert goodput[1] == pytest.approx(1.0)
    assert 0 < summary["goodput"] < 1
    # The reporter (client 0) crashed too: its start figures and the global
    # model's history stay those of the run, once per version.
    assert [e["model_version"] for e in summary["evaluations"]] == [0, 1, 2]
    assert summary["final_val_loss"] < summary["initial_val_loss"]
    # Crashed rounds' tokens count as processed (marked at the crash, before
    # the redone round closed): by the last version every token of the run,
    # the two crashed rounds' included, is on the axis.
    tokens = [e["tokens"] for e in summary["evaluations"]]
    assert tokens[0] == 0 < tokens[1] < tokens[2] == summary["tokens"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--clients", "3", "--speeds", "1,2"),
         "--speeds has 2 factor(s) for 3 clients: give exactly one"),
        (("--clients", "2", "--speeds", "1,0.5"),
         "client 1's factor 0.5 is invalid: each must be a finite number >= 1"),
        (("--clients", "2", "--speeds", "1,inf"), "client 1's factor inf is invalid"),
        (("--clients", "2", "--speeds", "1,fast"), "'fast' is not a number"),
        (("--crash-rate", "1"), "--crash-rate 1.0 is invalid: expected a probability"),
        (("--crash-rate", "-0.1"), "--crash-rate -0.1 is invalid"),
        (("--crash-rate", "nan"), "--crash-rate nan is invalid"),
        (("--max-restarts", "-1"), "--max-restarts -1 is invalid: expected >= 0"),
    ],
)  # fmt: skip
def test_bad_speeds_and_crash_flags_are_rejected_with_a_clear_message(
    flags: tuple[str, ...], message: str
) -> None:
    result = _simulate(*flags)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""
