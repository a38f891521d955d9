"""A 2-process torchrun worker counts as one client beside a plain client.

Runs `fedgrpc serve`, `client/torch_loop.py` and `torchrun --nproc-per-node 2
client/torchrun_worker.py` as real processes, then checks what every rank
reported after each round and what the coordinator counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedgrpc.crypto.files import save_key_pair
from fedgrpc.crypto.keys import PrivateKey
from tests.conftest import Spawn
from tests.helpers.serve import start_serve, status_at

REPO = Path(__file__).resolve().parents[2]
FEDGRPC = Path(sys.executable).with_name("fedgrpc")
ROUNDS, H, BATCH = 3, 5, 32
"""Both examples draw 32-sample batches; H is small to keep rounds fast."""
RUN_S = 75.0
"""Bound on the clients' run (~8 s normally), inside pytest's 120 s timeout."""
pytestmark = pytest.mark.system


def _start_coordinator(spawn: Spawn, tmp_path: Path) -> str:
    config = str(REPO / "server/coordinator.example.toml")
    flags = ["--config", config, "--open-enrollment", "--min-clients", "2"]
    _, address = start_serve(
        spawn, tmp_path / "coordinator.log", *flags, "--inner-steps", str(H)
    )
    return address


def _finish(process: subprocess.Popen[str], what: str, deadline: float) -> str:
    try:
        out, err = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        # SIGTERM, never SIGKILL: torchrun forwards it to its ranks, which run
        # in sessions of their own and would outlive a killed torchrun.
        process.terminate()
        out, err = process.communicate(timeout=30)
        pytest.fail(f"{what} did not finish within {RUN_S:g} s:\n{err}")
    assert process.returncode == 0, f"{what} failed:\n{err}"
    return out


def _reports(path: Path, rank: int) -> list[dict[str, object]]:
    lines = Path(f"{path}.rank{rank}").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_two_rank_worker_is_one_client_and_its_ranks_agree_every_round(
    spawn: Spawn, tmp_path: Path
) -> None:
    # Arrange: a coordinator waiting for two clients.
    address = _start_coordinator(spawn, tmp_path)
    report = tmp_path / "report"
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}

    # Persistent keys: their records (and credit) outlive their sessions.
    for name in ("plain", "worker"):
        save_key_pair(PrivateKey.generate(), tmp_path / "keys", name)

    # Act: one plain client and one 2-rank worker train ROUNDS rounds together.
    plain = spawn(
        [
            sys.executable,
            str(REPO / "client/torch_loop.py"),
            "--target",
            address,
            "--steps",
            str(ROUNDS * H),
            "--seed",
            "1",
            "--identity-key",
            str(tmp_path / "keys" / "plain.key"),
        ],
        **pipes,
    )
    worker = spawn(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(REPO / "client/torchrun_worker.py"),
            "--target",
            address,
            "--rounds",
            str(ROUNDS),
            "--inner-steps",
            str(H),
            "--report-file",
            str(report),
            "--identity-key",
            str(tmp_path / "keys" / "worker.key"),
        ],
        **pipes,
    )
    deadline = time.monotonic() + RUN_S
    _finish(worker, "torchrun worker", deadline)
    summary = json.loads(_finish(plain, "torch_loop client", deadline).splitlines()[-1])
    status = status_at(address)

    # Assert: both ranks hold identical weights at join and after every round.
    ranks = [_reports(report, 0), _reports(report, 1)]
    assert [line["round"] for line in ranks[0]] == list(range(ROUNDS + 1))
    for mine, theirs in zip(*ranks, strict=True):
        assert mine["digest"] == theirs["digest"], mine["round"]
        assert mine["version"] == theirs["version"] == mine["round"]
    assert {line.get("outcome") for line in ranks[1][1:]} == {"applied"}
    # ... and the same global weights as the plain client after the last round.
    assert ranks[1][-1]["weights"] == summary["weights"]

    # The coordinator saw exactly two clients in every round; the worker's
    # samples are both ranks' (the all-reduced sum), the plain client's one
    # rank's; seeding the initial weights is no update and earns nothing.
    assert status.model_version == ROUNDS
    assert [r.num_updates for r in status.recent_rounds] == [2] * ROUNDS
    samples = {c.client_id: c.samples_contributed for c in status.clients}
    worker_id, plain_id = str(ranks[0][-1]["client_id"]), summary["client_id"]
    assert set(samples) == {worker_id, plain_id}
    extra = [
        samples[worker_id] - 2 * ROUNDS * H * BATCH,
        samples[plain_id] - ROUNDS * H * BATCH,
    ]
    assert extra == [0, 0]
