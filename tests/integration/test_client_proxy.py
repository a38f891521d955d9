"""Clients behind a firewall: a round through a real HTTP CONNECT proxy.

A real coordinator (`fedgrpc.Coordinator`, 127.0.0.1 port 0), a real
`DiLoCoClient`, and the small asyncio proxy of `tests.helpers.connect_proxy`
in between; the proxy counts the CONNECTs it tunnelled. gRPC's core does
not exempt 127.0.0.1 or localhost from a proxy by itself, but it does skip
every host listed in `no_grpc_proxy` / `no_proxy`, even for the channel
option `grpc.http_proxy`: a developer machine or CI with
`no_proxy=localhost,127.0.0.1` would make these tests pass without any
proxy in the path. So each test clears those variables first, and asserts
that the proxy saw the CONNECT to the coordinator's port.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import pytest
import torch
from torch import nn

import fedgrpc
from fedgrpc.client import DiLoCoClient
from fedgrpc.client.admin import check_health
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.crypto.certs import write_dev_pki
from fedgrpc.errors import ConfigError, CoordinatorUnavailableError
from tests.helpers.connect_proxy import ConnectProxy, connect_proxy

H = 2
PROXY_VARIABLES = (
    "grpc_proxy", "https_proxy", "http_proxy", "no_grpc_proxy", "no_proxy",
    "GRPC_PROXY", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY",
)  # fmt: skip
FEDGRPC = Path(sys.executable).with_name("fedgrpc")


@pytest.fixture(autouse=True)
def _no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from an environment that names no proxy and exempts no host."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def coordinator() -> Iterator[fedgrpc.Coordinator]:
    config = CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, min_clients=1,
        inner_steps=H, round_timeout_s=30.0, chunk_bytes=1024,
        seed_from_first_client=True,
    )  # fmt: skip
    with fedgrpc.Coordinator(config) as running:
        yield running


def _one_round(address: str, config: ClientConfig) -> DiLoCoClient:
    """Join through `config`'s route, train to one sync point, return the client."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with DiLoCoClient(address, model, inner_steps=H, config=config) as client:
        synced = False
        while not synced:
            x = torch.randn(8, 4)
            loss = (model(x) - x[:, :2]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            synced = bool(client.step(loss, num_samples=8))
    return client


def _port(address: str) -> str:
    return address.rsplit(":", 1)[1]


def _assert_tunnelled(proxy: ConnectProxy, address: str) -> None:
    assert proxy.connects, "the client bypassed the proxy"
    assert set(proxy.connects) == {f"CONNECT 127.0.0.1:{_port(address)}"}
    # Join, the seed upload, the update and the pull all crossed the tunnel.
    assert proxy.tunnelled_bytes > 10 * 4


def _client_config(**fields: object) -> ClientConfig:
    base: dict[str, object] = {
        "rpc_timeout_s": 10, "round_wait_s": 60, "connect_timeout_s": 20,
    }  # fmt: skip
    base.update(fields)
    return ClientConfig(**base)  # type: ignore[arg-type]


def test_round_applies_through_the_configured_proxy(
    coordinator: fedgrpc.Coordinator,
) -> None:
    with connect_proxy() as proxy:
        client = _one_round(coordinator.address, _client_config(proxy=proxy.url))
        status = coordinator.wait_for_round(1, timeout=60)

    _assert_tunnelled(proxy, coordinator.address)
    assert client.last_round_outcome == "applied"
    assert status.rounds[0].applied
    assert status.model_version == 1


def test_a_slow_proxy_still_connects(coordinator: fedgrpc.Coordinator) -> None:
    # 0.5 s before each CONNECT answer: longer than the 100 ms gRPC's core
    # allowed one connection attempt while the channel set
    # grpc.min_reconnect_backoff_ms = 100; a single call (no retry) failed.
    with connect_proxy(answer_delay_s=0.5) as proxy:
        serving = check_health(
            coordinator.address, _client_config(proxy=proxy.url), timeout_s=10
        )
        client = _one_round(coordinator.address, _client_config(proxy=proxy.url))
    assert serving == "SERVING"
    _assert_tunnelled(proxy, coordinator.address)
    assert client.last_round_outcome == "applied"


def test_tls_runs_end_to_end_inside_the_tunnel(tmp_path: Path) -> None:
    pki = write_dev_pki(tmp_path / "pki")
    config = CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, min_clients=1,
        inner_steps=H, seed_from_first_client=True,
        tls_cert=str(pki.server_certificate), tls_key=str(pki.server_key),
    )  # fmt: skip
    with fedgrpc.Coordinator(config) as running, connect_proxy() as proxy:
        tls = _client_config(proxy=proxy.url, tls_ca=str(pki.ca_certificate))
        client = _one_round(running.address, tls)
        address = running.address
    plaintext = config.replace(tls_cert="", tls_key="")
    with fedgrpc.Coordinator(plaintext) as plain, connect_proxy() as clear_proxy:
        _one_round(plain.address, _client_config(proxy=clear_proxy.url))

    _assert_tunnelled(proxy, address)
    assert client.last_round_outcome == "applied"
    # The proxy carried only ciphertext: the method names a plaintext
    # channel shows it are nowhere in what it tunnelled.
    assert b"fedgrpc.v1.CoordinatorService" in clear_proxy.upstream
    assert b"fedgrpc.v1.CoordinatorService" not in proxy.upstream


def test_proxy_credentials_in_the_url_are_sent_as_basic_auth(
    coordinator: fedgrpc.Coordinator,
) -> None:
    with connect_proxy() as proxy:
        url = proxy.url.replace("http://", "http://alice:s3cret@")
        serving = check_health(coordinator.address, _client_config(proxy=url))
    assert serving == "SERVING"
    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert set(proxy.authorizations) == {expected}


def test_https_proxy_environment_variable_is_honoured(
    coordinator: fedgrpc.Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect_proxy() as proxy:
        monkeypatch.setenv("https_proxy", proxy.url)
        client = _one_round(coordinator.address, _client_config())

    _assert_tunnelled(proxy, coordinator.address)
    assert client.last_round_outcome == "applied"


def test_direct_ignores_the_environment_and_no_proxy_exempts_a_host(
    coordinator: fedgrpc.Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect_proxy(refuse=HTTPStatus.FORBIDDEN) as proxy:
        monkeypatch.setenv("https_proxy", proxy.url)
        direct = _one_round(coordinator.address, _client_config(proxy="direct"))
        monkeypatch.setenv("no_proxy", "example.org,127.0.0.1")
        exempt = _one_round(coordinator.address, _client_config(proxy=proxy.url))

    assert proxy.connects == []
    assert direct.last_round_outcome == "applied"
    assert exempt.last_round_outcome == "applied"


def test_a_refusing_proxy_fails_join_at_once_naming_it(
    coordinator: fedgrpc.Coordinator,
) -> None:
    # connect_timeout_s is long (and the test's timeout short): only the
    # fail-fast on a 4xx ends Join in time.
    with connect_proxy(refuse=HTTPStatus.FORBIDDEN) as proxy:
        config = _client_config(proxy=proxy.url, connect_timeout_s=600)
        with pytest.raises(CoordinatorUnavailableError) as raised:
            _one_round(coordinator.address, config)
        assert set(proxy.connects) == {
            f"CONNECT 127.0.0.1:{_port(coordinator.address)}"
        }
    message = str(raised.value)
    assert f"refused to tunnel to the coordinator at {coordinator.address}" in message
    assert "CONNECT answered 403" in message
    assert "ClientConfig.proxy" in message


def test_proxy_wanting_credentials_says_where_they_go(
    coordinator: fedgrpc.Coordinator,
) -> None:
    wants_credentials = HTTPStatus.PROXY_AUTHENTICATION_REQUIRED
    with (
        connect_proxy(refuse=wants_credentials) as proxy,
        pytest.raises(CoordinatorUnavailableError, match="answered 407") as raised,
    ):
        _one_round(coordinator.address, _client_config(proxy=proxy.url))
    assert "http://user:password@host:port" in str(raised.value)


@pytest.mark.parametrize(
    ("proxy", "problem"),
    [
        ("127.0.0.1:3128", "no scheme"),
        ("https://proxy.example.org:3128", "the scheme must be http"),
        ("http://proxy.example.org", "no port"),
        ("http://proxy.example.org:3128/path", "no path"),
        ("socks5://proxy.example.org:1080", "the scheme must be http"),
    ],
)
def test_a_proxy_grpc_would_ignore_is_refused_at_construction(
    proxy: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=f"proxy=.*{problem}"):
        ClientConfig(proxy=proxy)


def test_proxy_password_never_shows_in_the_error() -> None:
    with pytest.raises(ConfigError) as raised:
        ClientConfig(proxy="http://alice:s3cret@proxy.example.org")
    assert "s3cret" not in str(raised.value)
    assert "alice:***@proxy.example.org" in str(raised.value)


def test_status_command_reaches_the_coordinator_through_proxy_flag(
    coordinator: fedgrpc.Coordinator,
) -> None:
    with connect_proxy() as proxy:
        done = subprocess.run(
            [str(FEDGRPC), "status", "--health", "--target", coordinator.address,
             "--proxy", proxy.url],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SERVING"
    assert set(proxy.connects) == {f"CONNECT 127.0.0.1:{_port(coordinator.address)}"}


def test_status_command_through_a_refusing_proxy_says_so(
    coordinator: fedgrpc.Coordinator,
) -> None:
    with connect_proxy(refuse=HTTPStatus.FORBIDDEN) as proxy:
        done = subprocess.run(
            [str(FEDGRPC), "status", "--target", coordinator.address,
             "--proxy", proxy.url],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode != 0
    assert "HTTP proxy refused to tunnel" in done.stderr
    assert "CONNECT answered 403" in done.stderr
