"""`fedgrpc serve --max-rounds N` ends the run by itself, as a user would run it.

A real `fedgrpc serve` process (its initial model from `--init-model`, so no
client seeds) and two real client processes: after round
N closes the coordinator writes its final checkpoint, tells the clients the
run finished (their next sync points return "finished" at once, and
`client.finished` is true), and exits 0 once they left.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import Spawn
from tests.helpers.serve import log_events, start_serve
from tests.helpers.trainer import outcomes, report_lines, start_trainer

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]
MAX_ROUNDS = 2
SYNCS = MAX_ROUNDS + 2
"""Sync points each client asks for: two more than the run has rounds."""
WAIT_S = 120.0


def test_serve_exits_zero_after_max_rounds_with_the_final_checkpoint_on_disk(
    spawn: Spawn, tmp_path: Path
) -> None:
    log, checkpoints = tmp_path / "serve.log", tmp_path / "ckpt"
    init = tmp_path / "init.safetensors"  # the trainers' model: nn.Linear(8, 1)
    save_file({"weight": torch.zeros(1, 8), "bias": torch.ones(1)}, str(init))
    flags = ["--min-clients", "2", "--inner-steps", "2", "--open-enrollment",
             "--max-rounds", str(MAX_ROUNDS), "--init-model", str(init),
             "--checkpoint-dir", str(checkpoints)]  # fmt: skip
    serve, address = start_serve(spawn, log, *flags)
    reports = [tmp_path / f"client{i}.jsonl" for i in range(2)]
    clients = [start_trainer(spawn, address, SYNCS, report) for report in reports]

    for process in (*clients, serve):
        try:
            assert process.wait(timeout=WAIT_S) == 0, log.read_text()[-4000:]
        except subprocess.TimeoutExpired:
            pytest.fail(f"a process did not exit within {WAIT_S} s")

    events = log_events(log)
    closed = [e for e in events if e["event"] == "round_closed"]
    assert [e["round"] for e in closed] == list(range(1, MAX_ROUNDS + 1))
    assert any(e["event"] == "init_model_loaded" for e in events)
    finished = [e for e in events if e["event"] == "run_finished"]
    assert [e["rounds"] for e in finished] == [MAX_ROUNDS]
    assert (checkpoints / f"round-{MAX_ROUNDS}.ckpt").is_file()
    for report in reports:
        seen = outcomes(report)
        # Every round the run had was a sync point; what follows is "finished".
        assert seen[-2:] == ["finished", "finished"]
        assert "finished" not in seen[:-2]
        syncs = [line for line in report_lines(report) if "outcome" in line]
        assert syncs[-1]["finished"] is True
        assert syncs[-1]["version"] == closed[-1]["version"]
