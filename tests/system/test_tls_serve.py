"""`fedgrpc serve` with mutual TLS, as deployed: certificates from `fedgrpc certs`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fedgrpc.cli import main
from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig
from fedgrpc.crypto import write_dev_pki
from tests.conftest import Spawn
from tests.helpers import eventually

FEDGRPC = Path(sys.executable).with_name("fedgrpc")
pytestmark = pytest.mark.system


def _tls_flags(pki: Path, key: str = "server.key") -> list[str]:
    return [
        "--tls-cert", str(pki / "server.pem"),
        "--tls-key", str(pki / key),
        "--tls-client-ca", str(pki / "ca.pem"),
    ]  # fmt: skip


def _serve(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FEDGRPC), "serve", "--listen", "127.0.0.1:0", "--open-enrollment", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_runs_a_mutual_tls_round_and_logs_no_key(
    spawn: Spawn, tmp_path: Path
) -> None:
    # Arrange: a dev PKI from the CLI, then the daemon on a free port.
    pki = tmp_path / "pki"
    made = subprocess.run(
        [str(FEDGRPC), "certs", "--out", str(pki), "--client-name", "worker-1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    ready = tmp_path / "ready"
    coordinator = spawn(
        [
            str(FEDGRPC), "serve", "--listen", "127.0.0.1:0", "--ready-file",
            str(ready), "--min-clients", "1", "--inner-steps", "2",
            "--open-enrollment", "--seed-from-first-client", *_tls_flags(pki),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    eventually(lambda: ready.exists() or coordinator.poll() is not None, timeout_s=30)
    assert coordinator.poll() is None, (
        coordinator.stderr.read() if coordinator.stderr else ""
    )
    address = ready.read_text().strip()
    config = ClientConfig(
        connect_timeout_s=10,
        tls_ca=str(pki / "ca.pem"),
        tls_cert=str(pki / "client.pem"),
        tls_key=str(pki / "client.key"),
    )

    # Act: one round from this process over mutual TLS, then SIGTERM.
    model = nn.Linear(3, 1)
    with DiLoCoClient(address, model, config=config) as client:
        with torch.no_grad():
            model.bias.add_(1.0)
        client.step()
        client.step()
    coordinator.send_signal(signal.SIGTERM)
    _, logs = coordinator.communicate(timeout=30)

    # Assert
    assert client.last_round_outcome == "applied"
    assert coordinator.returncode == 0
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    (serving,) = [e for e in events if e["event"] == "coordinator_serving"]
    assert serving["tls"] == "mtls"
    assert f"(sha256 {serving['cert_sha256']}) for localhost" in made.stdout
    assert f"(sha256 {serving['client_ca_sha256']})" in made.stdout
    closed = [e for e in events if e["event"] == "round_closed"]
    assert [(e["round"], e["outcome"]) for e in closed] == [(1, "applied")]
    assert "PRIVATE KEY" not in logs
    assert (pki / "server.key").read_text().splitlines()[1] not in logs


def test_serve_refuses_unusable_tls_files_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = tmp_path / "pki"
    write_dev_pki(pki)

    # The key check runs when the server is built: a real `serve` process.
    wrong_key = _serve(*_tls_flags(pki, key="client.key"))
    # Pairing and readability fail while the config is built, before logging
    # is configured, so the entry point can run in-process.
    missing = main(["serve", "--listen", "127.0.0.1:0", *_tls_flags(pki, "nope.key")])
    missing_err = capsys.readouterr().err
    half = main(["serve", "--tls-cert", str(pki / "server.pem")])
    half_err = capsys.readouterr().err

    assert wrong_key.returncode == 2
    assert wrong_key.stderr.startswith("fedgrpc serve: error: tls_key=")
    assert "is not the private key of the certificate in tls_cert=" in wrong_key.stderr
    assert "Traceback" not in wrong_key.stderr
    assert missing == 2
    assert "nope.key' cannot be read: No such file or directory" in missing_err
    assert half == 2
    assert "tls_key='' is invalid: expected the private key of tls_cert=" in half_err
