"""The Node.js client stops cleanly when the run finishes (`serve --max-rounds`).

It asks for more rounds than the run has: after the last one it reports
`finished` and `done` and exits 0, without an error, and serve exits 0 too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import Spawn
from tests.helpers.serve import log_events, start_serve

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]
NODE_CLIENT = Path(__file__).resolve().parents[2] / "client/node"
WAIT_S = 120.0


def test_node_client_reports_finished_and_exits_zero_after_max_rounds(
    spawn: Spawn, tmp_path: Path
) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_CLIENT / "node_modules/@grpc/grpc-js").is_dir():
        pytest.fail("Node.js client not installed: run `make install` (npm ci)")
    log, init = tmp_path / "serve.log", tmp_path / "init.safetensors"
    # example.js's default model: torch.nn.Linear(8, 4)'s layout, float32.
    save_file({"weight": torch.ones(4, 8), "bias": torch.zeros(4)}, str(init))
    serve, address = start_serve(
        spawn, log, "--min-clients", "1", "--inner-steps", "1", "--open-enrollment",
        "--max-rounds", "1", "--init-model", str(init),
    )  # fmt: skip

    client = spawn(
        [node, str(NODE_CLIENT / "example.js"), "--target", address,
         "--rounds", "3", "--timeout-s", str(WAIT_S)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = client.communicate(timeout=WAIT_S)

    assert client.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    names = [e["event"] for e in events]
    assert names[-2:] == ["finished", "done"]
    assert names.count("pushed") == 1  # one round, nothing after it
    assert events[0]["seed_model"] is False  # the coordinator brought the model
    closed = [e for e in events if e["event"] == "round_closed"]
    assert closed[-1]["run_finished"] is True
    assert events[-1]["rounds"] == 1
    assert serve.wait(timeout=WAIT_S) == 0
    assert any(e["event"] == "run_finished" for e in log_events(log))
