"""`fedgrpc simulate` end to end with tiny settings (real processes, real gRPC)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FEDGRPC = Path(sys.executable).with_name("fedgrpc")
pytestmark = pytest.mark.system


def test_simulate_tiny_run_learns_and_reports() -> None:
    result = subprocess.run(
        [
            str(FEDGRPC),
            "simulate",
            "--clients",
            "2",
            "--rounds",
            "3",
            "--inner-steps",
            "5",
            "--json",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["clients"] == 2
    assert summary["rounds"] == summary["rounds_applied"] == 3
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.5
    # Dense fp32 uplink: 2 clients x 3 rounds x 4 bytes/param. No client
    # uploads initial weights: simulate gives the coordinator an init_model.
    assert summary["bytes_up"] == 4 * summary["num_parameters"] * 2 * 3
    assert "validation loss (start -> end)" in result.stderr  # the table


def test_simulate_rejects_bad_flags() -> None:
    result = subprocess.run(
        [str(FEDGRPC), "simulate", "--clients", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "clients=0 must be >= 1" in result.stderr


def test_simulate_with_topk_compression_sends_far_fewer_bytes() -> None:
    result = subprocess.run(
        [str(FEDGRPC), "simulate", "--clients", "2", "--rounds", "3",
         "--inner-steps", "5", "--json", "--no-progress",
         "--compression", "topk:0.01:int8"],
        capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rounds_applied"] == 3
    dense_update_bytes = 4 * summary["num_parameters"] * 2 * 3
    assert 0 < summary["bytes_up"] < dense_update_bytes / 50  # no seed upload
    assert summary["final_val_loss"] < summary["initial_val_loss"]


def test_simulate_with_secure_aggregation_learns() -> None:
    # Three clients: the fewest secure aggregation allows (two would reveal).
    result = subprocess.run(
        [str(FEDGRPC), "simulate", "--clients", "3", "--rounds", "3",
         "--inner-steps", "5", "--secure-aggregation", "--json", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    # max_rounds ends the run at round 3: no round 4 is keyed or counted.
    assert summary["rounds"] == summary["rounds_applied"] == 3
    assert 0 < summary["final_train_loss"] < summary["first_train_loss"]
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.3
    # Masked dense int8 codes travel as ring elements bit-packed at 8 +
    # ceil(log2 3) = 10 bits, so the uplink is 10/32 of dense fp32's (the
    # one chunk per update holds a multiple of 8 bits: no padding).
    fp32_rounds = 4 * summary["num_parameters"] * 3 * 3
    assert summary["bytes_up"] == fp32_rounds * 10 // 32  # no seed: init_model
