"""The deployment path: `fedgrpc serve` and two example clients, all processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Spawn
from tests.helpers import eventually

REPO = Path(__file__).resolve().parents[2]
FEDGRPC = Path(sys.executable).with_name("fedgrpc")
pytestmark = pytest.mark.system


def _start_coordinator(
    spawn: Spawn, tmp_path: Path, *extra: str
) -> tuple[subprocess.Popen[str], str]:
    ready = tmp_path / "ready"
    process = spawn(
        [
            str(FEDGRPC),
            "serve",
            "--config",
            str(REPO / "server/coordinator.example.toml"),
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            *extra,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    eventually(lambda: ready.exists() or process.poll() is not None, timeout_s=30)
    assert process.poll() is None, process.stderr.read() if process.stderr else ""
    return process, ready.read_text().strip()


def test_serve_with_two_torch_loop_clients_then_sigterm(
    spawn: Spawn, tmp_path: Path
) -> None:
    coordinator, address = _start_coordinator(
        spawn, tmp_path, "--min-clients", "2", "--inner-steps", "10"
    )
    assert address.startswith("127.0.0.1:")
    assert not address.endswith(":0")
    clients = [
        spawn(
            [
                sys.executable,
                str(REPO / "client/torch_loop.py"),
                "--target",
                address,
                "--steps",
                "40",
                "--seed",
                str(seed),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    summaries = []
    for client in clients:
        out, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    # 40 steps at H=10: four applied rounds, identical global weights everywhere.
    assert [s["model_version"] for s in summaries] == [4, 4]
    assert summaries[0]["weights"] == summaries[1]["weights"]
    assert summaries[0]["client_id"] != summaries[1]["client_id"]

    coordinator.send_signal(signal.SIGTERM)
    _, logs = coordinator.communicate(timeout=30)
    assert coordinator.returncode == 0
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    closed = [e for e in events if e["event"] == "round_closed"]
    assert [e["round"] for e in closed] == [1, 2, 3, 4]
    assert all(e["outcome"] == "applied" and e["updates"] == 2 for e in closed)
    assert events[-1]["event"] == "coordinator_stopped"


def test_serve_rejects_bad_config_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[coordinator]\nmin_clinets = 3\n")
    result = subprocess.run(
        [str(FEDGRPC), "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown key(s) min_clinets" in result.stderr
    result = subprocess.run(
        [str(FEDGRPC), "serve", "--min-clients", "0", "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "min_clients=0 is invalid" in result.stderr


def test_port_in_use_is_a_clear_error(spawn: Spawn, tmp_path: Path) -> None:
    _, address = _start_coordinator(spawn, tmp_path)
    result = subprocess.run(
        [str(FEDGRPC), "serve", "--listen", address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"cannot listen on {address}" in result.stderr
