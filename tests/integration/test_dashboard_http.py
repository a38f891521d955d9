"""The dashboard's HTTP server through real sockets: routes, credentials, bounds.

A real coordinator (in-thread, `--http-listen 127.0.0.1:0`); requests go
through urllib or raw sockets, never through the WSGI app directly.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services import status_feed
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.crypto.admin_token import new_admin_token
from fedgrpc.errors import ConfigError
from tests.helpers import eventually


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin.token"
    path.write_bytes(new_admin_token())
    path.chmod(0o600)
    return path


def _config(**overrides: object) -> CoordinatorConfig:
    base: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "open_enrollment": True,
        "seed_from_first_client": True,
        "http_listen": "127.0.0.1:0",
    }
    base.update(overrides)
    return CoordinatorConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def guarded(token_file: Path) -> Iterator[CoordinatorThread]:
    with serve_in_thread(_config(admin_token_file=str(token_file))) as running:
        yield running


def _http_address(running: CoordinatorThread) -> tuple[str, int]:
    assert running.running.http is not None
    host, port = running.running.http.address.rsplit(":", 1)
    return host, int(port)


def _get(
    running: CoordinatorThread, path: str, headers: dict[str, str] | None = None,
    method: str = "GET",
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    host, port = _http_address(running)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_unknown_paths_are_404_and_writes_are_405(guarded: CoordinatorThread) -> None:
    status, _, body = _get(guarded, "/admin/../etc/passwd")
    assert status == 404
    assert b"no such path" in body
    assert _get(guarded, "/api/v2/status")[0] == 404
    status, headers, body = _get(guarded, "/api/v1/status", method="POST")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    status, headers, _ = _get(guarded, "/api/v1/events", method="HEAD")
    assert status == 405  # a stream has no head: it would hold a slot for nothing
    assert headers["Allow"] == "GET"


def test_the_dashboard_and_api_need_the_admin_token(
    guarded: CoordinatorThread, token_file: Path
) -> None:
    token = token_file.read_text().strip()
    for path in ("/", "/dashboard.js", "/api/v1/status", "/api/v1/events"):
        status, headers, body = _get(guarded, path)
        assert status == 401, path
        assert b"Authorization: Bearer" in body
        assert headers["WWW-Authenticate"].startswith("Bearer")
    status, _, body = _get(guarded, "/api/v1/status", {"Authorization": "Bearer x" * 3})
    assert status == 401
    assert b"does not carry the admin token" in body
    assert token.encode() not in body

    status, headers, body = _get(
        guarded, "/api/v1/status", {"Authorization": f"Bearer {token}"}
    )
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    snapshot = json.loads(body)
    assert snapshot["run_id"] == guarded.status().run_id
    assert snapshot["phase"] == "ROUND_PHASE_WAITING_FOR_MODEL"
    assert "default-src 'self'" in headers["Content-Security-Policy"]


def test_a_token_link_sets_a_strict_http_only_cookie_that_opens_the_page(
    guarded: CoordinatorThread, token_file: Path
) -> None:
    token = token_file.read_text().strip()
    status, _, body = _get(guarded, "/?token=not-the-token")
    assert status == 401
    assert b"not this coordinator's admin token" in body

    status, headers, _ = _get(guarded, f"/?token={token}")
    assert status == 303
    assert headers["Location"] == "/"  # the token leaves the address bar
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    value = cookie.split(";")[0]
    assert token not in value  # an HMAC of the token, not the token
    status, _, body = _get(guarded, "/", {"Cookie": value})
    assert status == 200
    assert b"<title>fedgrpc coordinator</title>" in body
    status, _, body = _get(guarded, "/", {"Cookie": value[:-4] + "0000"})
    assert status == 401
    assert b"stale" in body


def test_probes_and_metrics_are_open_and_report_readiness(
    guarded: CoordinatorThread,
) -> None:
    assert _get(guarded, "/healthz")[:1] == (200,)
    status, _, body = _get(guarded, "/readyz")
    assert status == 503  # nobody has seeded the model yet
    assert b"no model yet" in body
    status, _, body = _get(guarded, "/metrics")
    assert status == 200
    assert b"fedgrpc_model_version" in body


def test_explicit_loopback_access_checks_the_host_header(token_file: Path) -> None:
    with serve_in_thread(_config(admin_access="loopback")) as running:
        assert _get(running, "/api/v1/status")[0] == 200
        # DNS rebinding: a page from evil.example resolved to 127.0.0.1.
        status, _, body = _get(running, "/api/v1/status", {"Host": "evil.example:8080"})
        assert status == 401
        assert b"admin credential" in body


def test_http_listen_needs_a_credential_or_an_explicit_opening() -> None:
    with pytest.raises(ConfigError, match=r"http_listen.*admin_token_file"):
        _config()  # admin_access "auto" without a token: nobody could read it
    with pytest.raises(ConfigError, match="http_max_connections"):
        _config(admin_access="loopback", http_max_connections=4,
                http_max_event_streams=4)  # fmt: skip


def _open_idle(address: tuple[str, int], n: int) -> list[socket.socket]:
    sockets = []
    for _ in range(n):
        s = socket.create_connection(address, timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        sockets.append(s)
    return sockets


def _closed_by_server(s: socket.socket, within_s: float) -> bool:
    s.settimeout(within_s)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_http_clients_cannot_exhaust_the_server() -> None:
    config = _config(admin_access="loopback", http_max_connections=4,
                     http_max_event_streams=2, http_read_timeout_s=1.0)  # fmt: skip
    with serve_in_thread(config) as running:
        address = _http_address(running)
        idle = _open_idle(address, 4)
        try:
            # The cap is reached: one more is closed as soon as it is accepted.
            extra = socket.create_connection(address, timeout=5)
            assert _closed_by_server(extra, 0.8)
            extra.close()
            # The read timeout then frees the idle ones, and a request works.
            assert all(_closed_by_server(s, 3.0) for s in idle)
            assert eventually(lambda: _get(running, "/healthz")[0] == 200)
        finally:
            for s in idle:
                s.close()
        assert running.running.http is not None
        assert running.running.http.server.refused >= 1


def _open_stream(address: tuple[str, int]) -> tuple[socket.socket, bytes]:
    """An /api/v1/events request; returns the socket and what came first."""
    s = socket.create_connection(address, timeout=5)
    s.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"data: " not in data:  # a 200's first event, or a refusal's end
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return s, data


def test_event_streams_are_capped_and_a_closed_one_frees_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(status_feed, "KEEPALIVE_S", 0.2)  # finds closed peers fast
    config = _config(admin_access="loopback", http_max_connections=8,
                     http_max_event_streams=2)  # fmt: skip
    with serve_in_thread(config) as running:
        address = _http_address(running)
        first, head = _open_stream(address)
        assert b" 200 " in head
        assert b"text/event-stream" in head
        assert b"event: status\ndata: {" in head
        second, _ = _open_stream(address)
        third, head = _open_stream(address)
        assert b" 503 " in head
        assert b"http_max_event_streams" in head
        third.close()
        # Probes and the API still answer while every stream slot is taken.
        assert _get(running, "/api/v1/status")[0] == 200
        first.close()
        feed = running.running.http.feed  # type: ignore[union-attr]
        eventually(lambda: feed.open_streams == 1, timeout_s=5)
        fourth, head = _open_stream(address)
        assert b" 200 " in head
        # A keep-alive comment arrives on an idle stream.
        fourth.settimeout(3)
        deadline = time.monotonic() + 3
        seen = b""
        while b": keep-alive" not in seen and time.monotonic() < deadline:
            seen += fourth.recv(4096)
        assert b": keep-alive" in seen
        for s in (second, fourth):
            s.close()
