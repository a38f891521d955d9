"""`fedgrpc serve --privacy central --max-epsilon E` ends the run on its budget.

A real `fedgrpc serve` process and two real client processes: rounds are
applied while ε(δ) stays within the budget; the round that would pass it is
not applied, the log says why, the clients are told the run finished, and
serve exits 0, as after `--max-rounds`. Settings central DP cannot hold
under make serve exit 2 before it binds, naming them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fedgrpc.privacy import PrivacyLedger, Release
from tests.conftest import Spawn
from tests.helpers.serve import FEDGRPC, log_events, start_serve
from tests.helpers.trainer import outcomes, start_trainer

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]
WAIT_S = 120.0
PRIVACY = ["--privacy", "central", "--weighting", "equal", "--dp-clip-norm", "0.1",
           "--dp-noise-multiplier", "2", "--dp-delta", "1e-5"]  # fmt: skip
"""z = 2: epsilon 2.17, 3.19, 4.01, 4.73 after rounds 1-4 (RDP, delta 1e-5)."""


def test_serve_finishes_on_its_privacy_budget_and_exits_zero(
    spawn: Spawn, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    init = tmp_path / "init.safetensors"  # the trainers' model: nn.Linear(8, 1)
    save_file({"weight": torch.zeros(1, 8), "bias": torch.ones(1)}, str(init))
    flags = ["--min-clients", "2", "--inner-steps", "2", "--open-enrollment",
             "--init-model", str(init), "--max-rounds", "10",
             "--max-epsilon", "4.5", *PRIVACY]  # fmt: skip
    serve, address = start_serve(spawn, log, *flags)
    reports = [tmp_path / f"client{i}.jsonl" for i in range(2)]
    clients = [start_trainer(spawn, address, 6, report) for report in reports]

    for process in (*clients, serve):
        try:
            assert process.wait(timeout=WAIT_S) == 0, log.read_text()[-4000:]
        except subprocess.TimeoutExpired:
            pytest.fail(f"a process did not exit within {WAIT_S} s")

    events = log_events(log)
    closed = [e for e in events if e["event"] == "round_closed"]
    assert [e["outcome"] for e in closed] == ["applied"] * 3 + ["skipped"]
    expected = [PrivacyLedger(releases=[Release(2.0, count=r)]).epsilon(1e-5)
                for r in (1, 2, 3, 3)]  # fmt: skip
    assert [e["epsilon"] for e in closed] == pytest.approx(expected, rel=1e-5)
    assert closed[-1]["privacy_exhausted"] is True
    assert "privacy budget" in closed[-1]["reason"]
    finished = [e for e in events if e["event"] == "run_finished"]
    assert [e.get("cause") for e in finished] == ["privacy_budget"]
    for report in reports:
        assert outcomes(report)[-1] == "finished"


def test_serve_refuses_central_privacy_with_claimed_sample_weights(
    tmp_path: Path,
) -> None:
    flags = [f for f in PRIVACY if f not in ("--weighting", "equal")]
    done = subprocess.run(
        [str(FEDGRPC), "serve", "--listen", "127.0.0.1:0", "--open-enrollment",
         "--seed-from-first-client", *flags],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "privacy = 'central'" in done.stderr
    assert "weighting = 'capped'" in done.stderr
