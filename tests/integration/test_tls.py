"""DiLoCoClient and a coordinator over TLS and mutual TLS, on 127.0.0.1 port 0.

The certificates are real, made by `fedgrpc.crypto.write_dev_pki` into a
temporary directory; a second, unrelated PKI stands in for an attacker's CA.
What a refused client sees was measured, not assumed: a coordinator that
rejects a handshake just closes the socket, so the client retries until
`connect_timeout_s` and then says where to look; a client that rejects the
coordinator's certificate fails at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fedgrpc import errors
from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.crypto import DevPki, write_dev_pki

H = 2
REFUSED_TIMEOUT_S = 1.0
"""connect_timeout_s of clients the coordinator refuses: they retry this long."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return write_dev_pki(tmp_path_factory.mktemp("pki"), client_name="worker-1")


@pytest.fixture(scope="module")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return write_dev_pki(tmp_path_factory.mktemp("foreign"), client_name="worker-1")


def _coordinator_config(**tls: str) -> CoordinatorConfig:
    return CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=1,
        inner_steps=H,
        round_timeout_s=30.0,
        chunk_bytes=1024,
        **tls,  # type: ignore[arg-type]
    )


@pytest.fixture
def mtls_coordinator(
    pki: DevPki, caplog: pytest.LogCaptureFixture
) -> Iterator[CoordinatorThread]:
    caplog.set_level(logging.INFO)
    config = _coordinator_config(
        tls_cert=str(pki.server_certificate),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca_certificate),
    )
    with serve_in_thread(config) as running:
        yield running


def _client_config(
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    **more: Any,
) -> ClientConfig:
    settings: dict[str, Any] = {
        "rpc_timeout_s": 10,
        "round_wait_s": 30,
        "connect_timeout_s": 10,
        **more,
    }
    return ClientConfig(
        tls_ca=str(ca or ""),
        tls_cert=str(cert or ""),
        tls_key=str(key or ""),
        **settings,
    )


def _mutual(pki: DevPki, **more: Any) -> ClientConfig:
    return _client_config(
        pki.ca_certificate, pki.client_certificate, pki.client_key, **more
    )


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    # The coordinator logs while the fixture starts it, the client in the test.
    return [*caplog.get_records("setup"), *caplog.get_records("call")]


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    # structlog hands the stdlib record its event dict as `msg`.
    found = [r.msg for r in _records(caplog) if isinstance(r.msg, dict)]
    return [event for event in found if event.get("event") == name]


def _run_one_round(address: str, config: ClientConfig) -> tuple[DiLoCoClient, Any]:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    with DiLoCoClient(address, model, config=config) as client:
        start = _flat(model)
        with torch.no_grad():
            model.weight.add_(0.5)
        local = _flat(model)
        for _ in range(H):
            client.step(0.1)
    return client, (start, local, _flat(model))


def test_round_over_mutual_tls_is_applied_and_logged_without_keys(
    mtls_coordinator: CoordinatorThread, pki: DevPki, caplog: pytest.LogCaptureFixture
) -> None:
    # Act
    client, (start, local, final) = _run_one_round(
        mtls_coordinator.address, _mutual(pki)
    )

    # Assert: one applied round, equal to torch's Nesterov SGD on the delta.
    assert client.last_round_outcome == "applied"
    assert client.model_version == 1
    reference = nn.Parameter(start.clone())
    reference.grad = start - local
    torch.optim.SGD([reference], lr=0.7, momentum=0.9, nesterov=True).step()
    torch.testing.assert_close(final, reference.detach())
    # Both ends logged their mode and certificate fingerprints, never a key.
    (serving,) = _events(caplog, "coordinator_serving")
    assert serving["tls"] == "mtls"
    assert serving["cert_sha256"] == pki.fingerprints["server.pem"]
    assert serving["client_ca_sha256"] == pki.fingerprints["ca.pem"]
    (channel,) = _events(caplog, "channel_tls")
    assert channel["tls"] == "mtls"
    assert channel["cert_sha256"] == pki.fingerprints["client.pem"]
    logged = repr([(r.msg, r.args) for r in _records(caplog)])
    for key in (pki.server_key, pki.client_key):
        body = key.read_text().splitlines()[1]
        assert body not in logged
    assert "PRIVATE KEY" not in logged


@pytest.mark.parametrize("who", ["no client certificate", "certificate of another CA"])
def test_client_without_a_trusted_certificate_is_refused(
    mtls_coordinator: CoordinatorThread, pki: DevPki, foreign_pki: DevPki, who: str
) -> None:
    # Arrange: trusts the coordinator, but cannot prove itself to it.
    cert, key = (
        (None, None)
        if who == "no client certificate"
        else (foreign_pki.client_certificate, foreign_pki.client_key)
    )
    config = _client_config(
        pki.ca_certificate, cert, key, connect_timeout_s=REFUSED_TIMEOUT_S
    )

    # Act / Assert: refused in the handshake; the message points at TLS.
    with pytest.raises(errors.CoordinatorUnavailableError) as refused:
        DiLoCoClient(mtls_coordinator.address, nn.Linear(4, 2), config=config)
    message = str(refused.value)
    assert "Socket closed" in message
    assert "with mutual TLS, of a client whose certificate it does not trust" in message
    assert "tls_client_ca" in message
    # The coordinator saw no Join and still serves a client it trusts.
    assert len(mtls_coordinator.status().clients) == 0
    client, _ = _run_one_round(mtls_coordinator.address, _mutual(pki))
    assert client.last_round_outcome == "applied"


def test_plaintext_client_against_a_tls_coordinator_is_told_to_set_tls_ca(
    mtls_coordinator: CoordinatorThread,
) -> None:
    config = _client_config(connect_timeout_s=REFUSED_TIMEOUT_S)

    with pytest.raises(errors.CoordinatorUnavailableError) as refused:
        DiLoCoClient(mtls_coordinator.address, nn.Linear(4, 2), config=config)

    message = str(refused.value)
    assert f"could not reach the coordinator at {mtls_coordinator.address}" in message
    assert "closes the connection of a plaintext client (set ClientConfig.tls_ca)" in (
        message
    )


def test_client_that_does_not_trust_the_coordinator_fails_at_once(
    mtls_coordinator: CoordinatorThread, pki: DevPki, foreign_pki: DevPki
) -> None:
    # A long connect timeout: only the fail-fast path can finish this test.
    config = _client_config(
        foreign_pki.ca_certificate,
        pki.client_certificate,
        pki.client_key,
        connect_timeout_s=600,
    )

    with pytest.raises(errors.CoordinatorUnavailableError) as refused:
        DiLoCoClient(mtls_coordinator.address, nn.Linear(4, 2), config=config)

    message = str(refused.value)
    assert message.startswith(
        f"the TLS handshake with the coordinator at {mtls_coordinator.address} failed"
    )
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "ClientConfig.tls_ca holds the CA that signed" in message


def test_tls_client_against_a_plaintext_coordinator_fails_at_once(pki: DevPki) -> None:
    config = _mutual(pki, connect_timeout_s=600)

    with (
        serve_in_thread(_coordinator_config()) as plaintext,
        pytest.raises(errors.CoordinatorUnavailableError) as refused,
    ):
        DiLoCoClient(plaintext.address, nn.Linear(4, 2), config=config)

    message = str(refused.value)
    assert "the TLS handshake with the coordinator" in message
    assert "WRONG_VERSION_NUMBER" in message
    assert "the coordinator serves TLS (tls_cert)" in message


def test_server_only_tls_round(pki: DevPki) -> None:
    config = _coordinator_config(
        tls_cert=str(pki.server_certificate), tls_key=str(pki.server_key)
    )

    with serve_in_thread(config) as coordinator:
        client, _ = _run_one_round(
            coordinator.address, _client_config(pki.ca_certificate)
        )

    assert client.last_round_outcome == "applied"
