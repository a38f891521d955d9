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


def test_fedgrpc_status_reads_with_admin_token_file_and_fails_clearly_without(
    token_file: Path,
) -> None:
    import subprocess
    import sys

    fedgrpc = Path(sys.executable).with_name("fedgrpc")

    def status(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(fedgrpc), "status", "--target", running.address, "--json", *flags],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    with serve_in_thread(_config(admin_token_file=str(token_file))) as running:
        ok = status("--admin-token-file", str(token_file))
        refused = status()
    assert ok.returncode == 0, ok.stderr
    assert '"run_id"' in ok.stdout
    assert refused.returncode != 0
    assert "UNAUTHENTICATED" in refused.stderr
    assert "--admin-token-file" in refused.stderr


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


def test_every_admin_method_of_every_shape_goes_through_the_guard() -> None:
    """A later admin RPC (say, resetting the divergence guard) cannot skip it.

    An AdminService method registered apart from `add_admin_service`, in each
    of gRPC's four call shapes, on a server built with the same guard.
    """
    import asyncio

    from fedgrpc.coordinator.services.admin_access import AdminGuard, AdminPolicy

    token = b"k" * 32
    reached: list[str] = []

    async def unary(request: Any, context: Any) -> bytes:
        reached.append("unary")
        return b"ok"

    async def streamed(request: Any, context: Any) -> Any:
        reached.append("stream")
        yield b"ok"

    shapes: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "UU": grpc.unary_unary_rpc_method_handler(unary),
        "SU": grpc.stream_unary_rpc_method_handler(unary),
        "US": grpc.unary_stream_rpc_method_handler(streamed),
        "SS": grpc.stream_stream_rpc_method_handler(streamed),
    }

    async def run() -> dict[str, tuple[grpc.StatusCode, grpc.StatusCode]]:
        guard = AdminGuard(AdminPolicy("credential", token))
        server = grpc.aio.server(interceptors=(guard,))
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("fedgrpc.v1.AdminService", shapes),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        codes = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for name in shapes:
                method = f"/fedgrpc.v1.AdminService/{name}"
                results = []
                for metadata in ((), bearer_metadata(token)):
                    call = _call(channel, name, method, metadata)
                    try:
                        await call
                    except grpc.aio.AioRpcError as exc:
                        results.append(exc.code())
                    else:
                        results.append(grpc.StatusCode.OK)
                codes[name] = (results[0], results[1])
        await server.stop(None)
        return codes

    codes = asyncio.run(run())
    for name, (without, with_token) in codes.items():
        assert without == grpc.StatusCode.UNAUTHENTICATED, name
        assert with_token == grpc.StatusCode.OK, name
    assert sorted(reached) == ["stream", "stream", "unary", "unary"]


def _call(channel: Any, shape: str, method: str, metadata: Any) -> Any:
    """Start one call of `shape` and return an awaitable for its end."""

    async def drain(call: Any) -> None:
        async for _ in call:
            pass

    if shape == "UU":
        return channel.unary_unary(method)(b"x", metadata=metadata, timeout=TIMEOUT_S)
    if shape == "SU":
        return channel.stream_unary(method)(
            iter([b"x"]), metadata=metadata, timeout=TIMEOUT_S
        )
    if shape == "US":
        call = channel.unary_stream(method)(b"x", metadata=metadata, timeout=TIMEOUT_S)
    else:
        call = channel.stream_stream(method)(
            iter([b"x"]), metadata=metadata, timeout=TIMEOUT_S
        )
    return drain(call)


def test_a_forged_page_token_is_invalid_argument_and_a_real_one_pages_on() -> None:
    with (
        serve_in_thread(_config()) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        forged = _refused(
            lambda: admin.GetStatus(
                admin_pb2.GetStatusRequest(page_token="../../etc"), timeout=TIMEOUT_S
            )
        )
        assert forged.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "next_page_token" in (forged.details() or "")
        empty = admin.GetStatus(
            admin_pb2.GetStatusRequest(page_token="c99999"), timeout=TIMEOUT_S
        )
        assert list(empty.clients) == []
        assert not empty.next_page_token
