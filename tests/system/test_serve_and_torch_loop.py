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


def _keygen(directory: Path, name: str) -> str:
    """`fedgrpc keygen`; returns the fingerprint it printed."""
    made = subprocess.run(
        [str(FEDGRPC), "keygen", "--out", str(directory), "--name", name],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return made.stdout.split("fingerprint: ")[1].strip()


def test_serve_with_two_torch_loop_clients_then_sigterm(
    spawn: Spawn, tmp_path: Path
) -> None:
    # Arrange: keys as an operator makes them; only the clients' .pub files
    # go into the allowed directory.
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    _keygen(keys, "coordinator")
    fingerprints = [_keygen(keys, f"worker{i}") for i in (1, 2)]
    allowed.mkdir()
    for i in (1, 2):
        (allowed / f"worker{i}.pub").write_bytes((keys / f"worker{i}.pub").read_bytes())
    coordinator, address = _start_coordinator(
        spawn, tmp_path, "--min-clients", "2", "--inner-steps", "10",
        "--seed-from-first-client",  # the first torch_loop.py client seeds
        "--identity-key", str(keys / "coordinator.key"),
        "--allowed-client-keys", str(allowed),
    )  # fmt: skip
    assert address.startswith("127.0.0.1:")
    assert not address.endswith(":0")

    def client_argv(seed: int) -> list[str]:
        return [
            sys.executable, str(REPO / "client/torch_loop.py"),
            "--target", address, "--steps", "40", "--seed", str(seed),
            "--identity-key", str(keys / f"worker{seed}.key"),
            "--coordinator-key", str(keys / "coordinator.pub"),
        ]  # fmt: skip

    clients = [
        spawn(
            client_argv(seed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
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
    assert all(e["outcome"] == "applied" for e in closed)
    assert all((e["updates_applied"], e["updates_discarded"]) == (2, 0) for e in closed)
    assert events[-1]["event"] == "coordinator_stopped"
    # Identities in the logs are fingerprints; every update's digest is logged.
    joined = {e["key"] for e in events if e["event"] == "client_joined"}
    assert joined == {f[:8] for f in fingerprints}
    committed = [e for e in events if e["event"] == "update_committed"]
    assert len(committed) == 1 + 4 * 2  # the seed, then 2 per round
    assert all(len(e["update_sha256"]) == 64 for e in committed)
    assert "PRIVATE KEY" not in logs


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


def test_serve_without_allowed_keys_or_open_enrollment_refuses_to_start() -> None:
    result = subprocess.run(
        [str(FEDGRPC), "serve", "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "no client could join: set allowed_client_keys" in result.stderr


def test_port_in_use_is_a_clear_error(spawn: Spawn, tmp_path: Path) -> None:
    seeding = "--seed-from-first-client"
    _, address = _start_coordinator(spawn, tmp_path, "--open-enrollment", seeding)
    result = subprocess.run(
        [str(FEDGRPC), "serve", "--listen", address, "--open-enrollment", seeding],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"cannot listen on {address}" in result.stderr
