"""Who may read status: AdminService needs an admin credential (issue 13, A.6).

Real coordinators on port 0, real TLS certificates from `write_dev_pki`, raw
generated stubs. On main, anyone who could connect read GetStatus (client
ids, names, key fingerprints, losses, the round nonce) and reflection was
always on; each test here failed there. A caller that is not on loopback is
made by binding the coordinator to this machine's own non-loopback address.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedgrpc import errors
from fedgrpc._proto.v1 import admin_pb2, admin_pb2_grpc
from fedgrpc.client.admin import fetch_status
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from fedgrpc.crypto import DevPki, write_dev_pki
from fedgrpc.crypto.admin_token import bearer_metadata

TIMEOUT_S = 10


def _config(**access: Any) -> CoordinatorConfig:
    settings: dict[str, Any] = {
        "seed_from_first_client": True,
        "listen": "127.0.0.1:0",
        "open_enrollment": True,
        "min_clients": 1,
        **access,
    }
    return CoordinatorConfig(**settings)


def _status(
    channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()
) -> admin_pb2.GetStatusResponse:
    stub = admin_pb2_grpc.AdminServiceStub(channel)
    return stub.GetStatus(
        admin_pb2.GetStatusRequest(), timeout=TIMEOUT_S, metadata=metadata
    )


def _refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return write_dev_pki(tmp_path_factory.mktemp("pki"), admin=True)


@pytest.fixture
def token_file(pki: DevPki) -> Path:
    assert pki.admin_token is not None
    return pki.admin_token


def _own_address() -> str | None:
    """This machine's non-loopback IPv4 address, if it has one (no packet sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks a route
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_a_token_protected_coordinator_refuses_status_without_the_token(
    token_file: Path,
) -> None:
    config = _config(admin_token_file=str(token_file))
    with (
        serve_in_thread(config) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        missing = _refused(lambda: _status(channel))
        assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "admin credential" in (missing.details() or "")
        assert str(token_file.parent) not in (missing.details() or "")
        wrong = _refused(lambda: _status(channel, bearer_metadata(b"x" * 43)))
        assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "does not match" in (wrong.details() or "")
        token = token_file.read_bytes().strip()
        assert _status(channel, bearer_metadata(token)).run_id
        # `fedgrpc status` pages through with the token; without it, it fails.
        seen = fetch_status(running.address, admin_token_file=str(token_file))
        assert seen.run_id
        with pytest.raises(errors.FedGrpcError, match="UNAUTHENTICATED"):
            fetch_status(running.address)


def test_health_stays_open_when_status_is_refused(token_file: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    config = _config(admin_token_file=str(token_file))
    with (
        serve_in_thread(config) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        assert _refused(lambda: _status(channel)).code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_by_default_status_is_refused_to_a_caller_off_this_host() -> None:
    address = _own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    config = _config(listen=f"{address}:0")
    with (
        serve_in_thread(config) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        refused = _refused(lambda: _status(channel))
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "non-loopback" in (refused.details() or "")


def test_by_default_status_is_answered_on_loopback() -> None:
    with (
        serve_in_thread(_config()) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        assert _status(channel).run_id == running.status().run_id


@pytest.fixture
def mtls_coordinator(pki: DevPki) -> Iterator[str]:
    config = _config(
        tls_cert=str(pki.server_certificate),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca_certificate),
        admin_access="credential",
    )
    with serve_in_thread(config) as running:
        yield running.address


def _mtls(pki: DevPki, cert: Path | None, key: Path | None) -> ClientConfig:
    return ClientConfig(
        tls_ca=str(pki.ca_certificate), tls_cert=str(cert), tls_key=str(key)
    )


def test_under_mutual_tls_only_an_admin_certificate_reads_status(
    pki: DevPki, mtls_coordinator: str
) -> None:
    admin = _mtls(pki, pki.admin_certificate, pki.admin_key)
    assert fetch_status(mtls_coordinator, admin).run_id
    worker = _mtls(pki, pki.client_certificate, pki.client_key)
    with pytest.raises(errors.FedGrpcError, match=r"PERMISSION_DENIED.*admin role"):
        fetch_status(mtls_coordinator, worker)


def test_reflection_is_off_by_default_and_can_be_turned_on() -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    def services(address: str) -> set[str]:
        with grpc.insecure_channel(address) as channel:
            replies = reflection_pb2_grpc.ServerReflectionStub(
                channel
            ).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                timeout=TIMEOUT_S,
            )
            return {s.name for r in replies for s in r.list_services_response.service}

    with serve_in_thread(_config()) as running:
        off = _refused(lambda: services(running.address))
        assert off.code() == grpc.StatusCode.UNIMPLEMENTED
    with serve_in_thread(_config(reflection=True)) as running:
        assert "fedgrpc.v1.AdminService" in services(running.address)


def test_a_short_admin_token_is_refused_at_start_naming_the_setting(
    tmp_path: Path,
) -> None:
    short = tmp_path / "admin.token"
    short.write_text("hunter2\n")
    short.chmod(0o600)
    with (
        pytest.raises(errors.ConfigError, match="admin_token_file"),
        serve_in_thread(_config(admin_token_file=str(short))),
    ):
        pass
