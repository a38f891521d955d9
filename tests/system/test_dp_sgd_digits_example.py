"""`client/dp_sgd_digits.py` as a user runs it: `fedgrpc serve` and two DP-SGD silos.

All processes. Each silo trains with Opacus DP-SGD at ε = 3 (δ = 1e-5) on
its own half of scikit-learn's digits; each reports the ε its ledger
reached, which must be the target (calibrated, not passed), and
`fedgrpc status` shows the same ε per client: it came through the signed
update headers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Spawn
from tests.system.test_serve_and_torch_loop import _keygen, _start_coordinator

REPO = Path(__file__).resolve().parents[2]
FEDGRPC = Path(sys.executable).with_name("fedgrpc")
pytestmark = pytest.mark.system


def test_two_dp_sgd_digit_silos_reach_their_epsilon_and_status_shows_it(
    spawn: Spawn, tmp_path: Path
) -> None:
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    _keygen(keys, "coordinator")
    for i in (0, 1):  # registered keys: their records outlive their leaving
        _keygen(keys, f"silo{i}")
    allowed.mkdir()
    for i in (0, 1):
        (allowed / f"silo{i}.pub").write_bytes((keys / f"silo{i}.pub").read_bytes())
    coordinator, address = _start_coordinator(
        spawn, tmp_path, "--min-clients", "2", "--inner-steps", "6",
        "--seed-from-first-client",
        "--identity-key", str(keys / "coordinator.key"),
        "--allowed-client-keys", str(allowed),
    )  # fmt: skip

    def silo_argv(i: int) -> list[str]:
        return [
            sys.executable, str(REPO / "client/dp_sgd_digits.py"),
            "--target", address, "--shard", str(i), "--shards", "2",
            "--epsilon", "3", "--epochs", "3",
            "--identity-key", str(keys / f"silo{i}.key"),
            "--coordinator-key", str(keys / "coordinator.pub"),
        ]  # fmt: skip

    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    silos = [spawn(silo_argv(i), **pipes) for i in (0, 1)]
    summaries = []
    for silo in silos:
        out, err = silo.communicate(timeout=240)
        assert silo.returncode == 0, err[-3000:]
        summaries.append(json.loads(out.strip().splitlines()[-1]))

    for summary in summaries:
        assert summary["steps"] == 36  # 3 epochs x 12 Poisson batches
        assert 2.97 <= summary["epsilon"] <= 3.0  # the plan, spent, not passed
        assert summary["opacus_epsilon"] == pytest.approx(summary["epsilon"], rel=0.02)
        assert summary["model_version"] == 6  # 36 steps at H = 6
        assert summary["test_accuracy"] > 0.5  # ten classes: chance is 0.1

    shown = subprocess.run(
        [str(FEDGRPC), "status", "--target", address, "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = {c["client_id"]: c for c in json.loads(shown.stdout)["clients"]}
    for summary in summaries:
        row = rows[summary["client_id"]]
        assert row["record_dp_epsilon"] == summary["epsilon"]
        assert (row["record_dp_delta"], row["record_dp_steps"]) == (1e-5, 36)
    table = subprocess.run(
        [str(FEDGRPC), "status", "--target", address],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "record ε (δ)" in table
    assert f"{summaries[0]['epsilon']:.2f} (1e-05)" in table
    coordinator.terminate()
    coordinator.communicate(timeout=30)
