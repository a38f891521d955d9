"""The channel to the coordinator: opening it (TLS, proxy) and backing off.

Two backoff schedules live here, one per kind of wait: `retry_unavailable`
retries one call while a coordinator is not up yet (the first Join, 50 ms
doubling to 2 s), and `Backoff` paces re-joins after an established
connection was lost (`ClientConfig.reconnect_*`, jittered so restarted
coordinators are not hit by every client at once). Runs on the client's
background loop (`boundary.BackgroundLoop`).
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar

import grpc

from fedgrpc.client.status import RpcName, error_from_rpc, status_code
from fedgrpc.config import ClientConfig
from fedgrpc.config.proxy import DIRECT, redact_proxy
from fedgrpc.crypto.tls import ClientTLS, load_client_tls
from fedgrpc.errors import CoordinatorUnavailableError, FedGrpcError
from fedgrpc.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")

MAX_MESSAGE_BYTES = 64 << 20
"""Client-side send/receive limit. The coordinator enforces its own (~1 MiB +
4 KiB); this only has to be larger than any message it may legally send."""
MIN_CONNECT_TIMEOUT_MS = 20_000
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # gRPC's own reconnect backoff starts at 1 s and grows 1.6x; calls fail
    # fast with UNAVAILABLE meanwhile. Starting lower lets a client that came
    # up before its coordinator connect within ~0.1-2 s of the server start.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Despite its name, gRPC's core takes this as the least time one
    # connection attempt may take: TCP connect, the proxy's CONNECT and the
    # TLS handshake together. It used to be 100 ms like the initial backoff,
    # and then a client behind a proxy, or far from its coordinator, timed
    # out every attempt ("Endpoint closing"). 20 s is gRPC's default.
    ("grpc.min_reconnect_backoff_ms", MIN_CONNECT_TIMEOUT_MS),
]
INITIAL_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0
JITTER_LOW = 0.5
"""A re-join pause is drawn uniformly from [JITTER_LOW, 1] x the nominal delay
("equal jitter"): spread out, yet never much shorter than the schedule."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What Join granted: sent with every later call. Never log the token."""

    client_id: str
    session_token: bytes = field(repr=False)


def channel_options(config: ClientConfig | None) -> list[tuple[str, Any]]:
    """The channel options for `config`: message limits, backoff, its proxy.

    `proxy` "" adds nothing, so gRPC's own environment variables
    (grpc_proxy, https_proxy, http_proxy; no_grpc_proxy, no_proxy) decide;
    a URL sets `grpc.http_proxy`, which wins over them; "direct" sets
    `grpc.enable_http_proxy` to 0, which ignores them.
    """
    proxy = config.proxy if config is not None else ""
    if proxy == DIRECT:
        return [*_CHANNEL_OPTIONS, ("grpc.enable_http_proxy", 0)]
    if proxy:
        return [*_CHANNEL_OPTIONS, ("grpc.http_proxy", proxy)]
    return list(_CHANNEL_OPTIONS)


def open_channel(target: str, config: ClientConfig | None = None) -> grpc.aio.Channel:
    """A grpc.aio channel to `target` ("host:port"): TLS if `config.tls_ca` is set.

    Must be called on the loop that will use it (grpc.aio binds a channel to
    the running loop). The TLS files are read here, so a bad one fails the
    connect at once instead of every handshake.

    Raises:
        ConfigError: a TLS file is not PEM, or the key does not fit the
            certificate (`fedgrpc.crypto.tls`).
    """
    options = channel_options(config)
    if config is not None and config.proxy:
        log.info("channel_proxy", peer=target, proxy=redact_proxy(config.proxy))
    if config is None or not config.tls_ca:
        return grpc.aio.insecure_channel(target, options=options)
    tls = load_client_tls(config.tls_ca, config.tls_cert, config.tls_key)
    log.info(
        "channel_tls", peer=target, tls=tls.mode, cert_sha256=tls.certificate_sha256
    )
    return grpc.aio.secure_channel(target, channel_credentials(tls), options=options)


def channel_credentials(tls: ClientTLS) -> grpc.ChannelCredentials:
    """The credentials for `tls`: verify the coordinator, present our cert if any.

    grpc checks the coordinator's certificate against the host part of the
    target, so connect by a name or address the certificate lists.
    """
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca,
        private_key=tls.private_key,
        certificate_chain=tls.certificate_chain,
    )


def _is_handshake_failure(details: str) -> bool:
    # grpc's wording for a TLS handshake this side rejected (untrusted or
    # misnamed coordinator certificate, plaintext server): retrying cannot help.
    return "handshake failed" in details.lower()


_PROXY_REFUSAL = re.compile(r"HTTP proxy returned response code (\d+)")
"""grpc's wording when the proxy answers CONNECT with anything but 2xx."""


def proxy_refusal(details: str) -> int | None:
    """The HTTP status a proxy refused our CONNECT with, if it was 4xx.

    A 4xx is the proxy's policy (403: this host or port is not allowed;
    407: it wants credentials): retrying cannot help, unlike a 5xx (502:
    the proxy could not reach the coordinator, which may not be up yet).
    """
    found = _PROXY_REFUSAL.search(details)
    if found is None or not 400 <= int(found.group(1)) < 500:
        return None
    return int(found.group(1))


def proxy_refusal_message(target: str, code: int, details: str) -> str:
    """What to tell the user when the proxy refused to tunnel to `target`."""
    fix = (
        "put the proxy's credentials in its URL, http://user:password@host:port"
        if code == HTTPStatus.PROXY_AUTHENTICATION_REQUIRED
        else "ask for CONNECT to this host and port to be allowed, or reach "
        "the coordinator without the proxy (ClientConfig.proxy = 'direct', "
        "or list the host in no_grpc_proxy)"
    )
    return (
        f"the HTTP proxy refused to tunnel to the coordinator at {target} "
        f"(CONNECT answered {code}): {details}; the proxy is ClientConfig.proxy "
        f"or, when that is empty, the grpc_proxy / https_proxy / http_proxy "
        f"environment variable; {fix}"
    )


def _unreachable_hint(details: str) -> str:
    """What to check when the coordinator stayed unreachable, from grpc's details."""
    hint = (
        "check that it is running and the address is right, or raise "
        "ClientConfig.connect_timeout_s"
    )
    if "socket closed" in details.lower():
        # What a TLS coordinator does to a plaintext client, and with mutual
        # TLS to a client whose certificate it does not trust: both look like
        # a closed socket from here.
        hint += (
            "; a coordinator serving TLS closes the connection of a plaintext "
            "client (set ClientConfig.tls_ca) and, with mutual TLS, of a client "
            "whose certificate it does not trust (check ClientConfig.tls_cert "
            "and tls_key were issued by the CA in the coordinator's tls_client_ca)"
        )
    return hint


async def retry_unavailable(
    call: Callable[[float], Awaitable[T]],
    *,
    rpc: RpcName,
    target: str,
    connect_timeout_s: float,
    attempt_timeout_s: float,
) -> T:
    """Call `call(timeout_s)` until it stops failing with UNAVAILABLE.

    Retries with exponential backoff (50 ms doubling to 2 s) because the
    coordinator may not be up yet when a training job starts. Only
    UNAVAILABLE is retried: Join is not idempotent, and a DEADLINE_EXCEEDED
    attempt may have registered us. A failed TLS handshake is not retried:
    a certificate that does not verify will not start to; nor is a proxy
    that refused our CONNECT with a 4xx (its policy, `proxy_refusal`). With
    `connect_timeout_s` 0 the call is tried once (a reconnect attempt, whose
    caller keeps its own backoff schedule).

    Raises:
        CoordinatorUnavailableError: still UNAVAILABLE after
            `connect_timeout_s` (also when the window ends inside an attempt
            that then times out), naming the target and the last
            UNAVAILABLE details, or
            at once when the TLS handshake failed on this side or the HTTP
            proxy refused to tunnel.
        FedGrpcError: any other status, mapped by `error_from_rpc`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + connect_timeout_s
    delay = INITIAL_BACKOFF_S
    attempt = 0
    last_unavailable: FedGrpcError | None = None
    while True:
        attempt += 1
        remaining = deadline - loop.time()
        timeout_s = remaining if connect_timeout_s > 0 else attempt_timeout_s
        cut_by_window = timeout_s < attempt_timeout_s
        try:
            return await call(max(0.01, min(attempt_timeout_s, timeout_s)))
        except grpc.RpcError as exc:
            mapped = error_from_rpc(exc, rpc)
            code = status_code(exc)
            if (
                code is grpc.StatusCode.DEADLINE_EXCEEDED
                and cut_by_window
                and last_unavailable is not None
            ):
                # The window ran out inside an attempt: a bare "Deadline
                # Exceeded" would hide why the earlier attempts failed.
                raise CoordinatorUnavailableError(
                    f"could not reach the coordinator at {target} within "
                    f"{connect_timeout_s:g} s ({attempt} attempts, the last cut "
                    f"off by that limit): {last_unavailable}; "
                    f"{_unreachable_hint(str(last_unavailable))}"
                ) from exc
            if code is not grpc.StatusCode.UNAVAILABLE:
                raise mapped from exc
            last_unavailable = mapped
            refused = proxy_refusal(str(mapped))
            if refused is not None:
                raise CoordinatorUnavailableError(
                    proxy_refusal_message(target, refused, str(mapped))
                ) from exc
            if _is_handshake_failure(str(mapped)):
                raise CoordinatorUnavailableError(
                    f"the TLS handshake with the coordinator at {target} failed: "
                    f"{mapped}; check that ClientConfig.tls_ca holds the CA that "
                    "signed the coordinator's certificate, that the certificate "
                    f"names the host in {target}, and that the coordinator "
                    "serves TLS (tls_cert)"
                ) from exc
            remaining = deadline - loop.time()
            if connect_timeout_s <= 0:  # one attempt; the caller retries
                raise CoordinatorUnavailableError(
                    f"the coordinator at {target} is unreachable: {mapped}"
                ) from exc
            if remaining <= 0:
                raise CoordinatorUnavailableError(
                    f"could not reach the coordinator at {target} within "
                    f"{connect_timeout_s:g} s ({attempt} attempts): {mapped}; "
                    f"{_unreachable_hint(str(mapped))}"
                ) from exc
            log.debug("rpc_retry", rpc=rpc, peer=target, attempt=attempt, delay=delay)
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_BACKOFF_S)


class Backoff:
    """Exponential backoff with jitter: 1x, 2x, 4x ... `initial_s`, capped.

    Not thread-safe; one per client. Inject `rng` for reproducible tests.
    """

    def __init__(
        self, initial_s: float, max_s: float, rng: random.Random | None = None
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._rng = rng or random.Random()
        self._nominal_s = initial_s

    def next_delay(self) -> float:
        """The next pause in seconds, within [JITTER_LOW, 1] x min(nominal, max)."""
        nominal = min(self._nominal_s, self.max_s)
        self._nominal_s = min(self._nominal_s * 2, self.max_s)
        return nominal * self._rng.uniform(JITTER_LOW, 1.0)

    def reset(self) -> None:
        """Start from `initial_s` again (after a success)."""
        self._nominal_s = self.initial_s
