"""The client's one sync/async boundary: a background event loop and its channel.

The user's training loop is synchronous. Every grpc.aio object (channel,
calls, the Session task) lives on one asyncio loop running on one daemon
thread owned by `BackgroundLoop`; the training thread only submits
coroutines through `BackgroundLoop.run` and blocks on their results. This is
the single crossing point, so no grpc object is ever touched from two threads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from fedgrpc.client.status import RpcName, error_from_rpc, status_code
from fedgrpc.config import ClientConfig
from fedgrpc.crypto.tls import ClientTLS, load_client_tls
from fedgrpc.errors import CoordinatorUnavailableError
from fedgrpc.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")

MAX_MESSAGE_BYTES = 64 << 20
"""Client-side send/receive limit. The coordinator enforces its own (~1 MiB +
4 KiB); this only has to be larger than any message it may legally send."""
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # gRPC's own reconnect backoff starts at 1 s and grows 1.6x; calls fail
    # fast with UNAVAILABLE meanwhile. Starting lower lets a client that came
    # up before its coordinator connect within ~0.1-2 s of the server start.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
_CLOSE_TIMEOUT_S = 10.0
INITIAL_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """What Join granted: sent with every later call. Never log the token."""

    client_id: str
    session_token: bytes = field(repr=False)


class BackgroundLoop:
    """An asyncio event loop on one daemon thread, driven from other threads.

    Thread safety: `run` may be called from any thread except the loop's
    own (that would deadlock, so it raises). `start` and `close` are meant
    for the owner's thread.
    """

    def __init__(self, name: str = "fedgrpc-client") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._closed = False

    def start(self) -> None:
        """Start the loop thread; returns once it is running."""
        ready = threading.Event()
        self._loop.call_soon(ready.set)
        self._thread.start()
        ready.wait()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
            # Stopped by close(): let leftover tasks see CancelledError so
            # grpc calls are cancelled rather than dropped mid-flight.
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(
                asyncio.gather(*pending, return_exceptions=True)
            )
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()

    @property
    def is_running(self) -> bool:
        """True between `start` and `close`."""
        return self._thread.is_alive() and not self._closed

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run `coro` on the loop and block the calling thread for its result.

        Args:
            coro: The coroutine; it runs on the loop thread.
            timeout: Seconds to wait; None waits forever. Each coroutine
                bounds its own RPCs, so this is a backstop.

        Raises:
            TimeoutError: `timeout` passed; the coroutine is cancelled.
            RuntimeError: the loop is closed, or this is the loop's thread.
            BaseException: whatever `coro` raised. KeyboardInterrupt in the
                caller cancels `coro` before propagating.
        """
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("BackgroundLoop.run called on its own loop thread")
        if not self.is_running:
            coro.close()
            raise RuntimeError("the client's background loop is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except BaseException:
            # Timeout, KeyboardInterrupt or the coroutine's own error: make
            # sure nothing keeps running on the loop on our behalf.
            future.cancel()
            raise

    def close(self, timeout: float = _CLOSE_TIMEOUT_S) -> None:
        """Stop the loop, cancel what still runs on it, join the thread.

        Idempotent. Close grpc channels (through `run`) before this.
        """
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        elif not self._loop.is_closed():
            self._loop.close()
        if self._thread.is_alive():
            log.warning("background_loop_stuck", seconds=timeout)


def open_channel(target: str, config: ClientConfig | None = None) -> grpc.aio.Channel:
    """A grpc.aio channel to `target` ("host:port"): TLS if `config.tls_ca` is set.

    Must be called on the loop that will use it (grpc.aio binds a channel to
    the running loop). The TLS files are read here, so a bad one fails the
    connect at once instead of every handshake.

    Raises:
        ConfigError: a TLS file is not PEM, or the key does not fit the
            certificate (`fedgrpc.crypto.tls`).
    """
    if config is None or not config.tls_ca:
        return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
    tls = load_client_tls(config.tls_ca, config.tls_cert, config.tls_key)
    log.info(
        "channel_tls", peer=target, tls=tls.mode, cert_sha256=tls.certificate_sha256
    )
    return grpc.aio.secure_channel(
        target, channel_credentials(tls), options=_CHANNEL_OPTIONS
    )


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
    a certificate that does not verify will not start to. With
    `connect_timeout_s` 0 the call is tried once (a reconnect attempt, whose
    caller keeps its own backoff schedule).

    Raises:
        CoordinatorUnavailableError: still UNAVAILABLE after
            `connect_timeout_s`, naming the target and the last details, or
            at once when the TLS handshake failed on this side.
        FedGrpcError: any other status, mapped by `error_from_rpc`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + connect_timeout_s
    delay = INITIAL_BACKOFF_S
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - loop.time()
        timeout_s = remaining if connect_timeout_s > 0 else attempt_timeout_s
        try:
            return await call(max(0.01, min(attempt_timeout_s, timeout_s)))
        except grpc.RpcError as exc:
            mapped = error_from_rpc(exc, rpc)
            if status_code(exc) is not grpc.StatusCode.UNAVAILABLE:
                raise mapped from exc
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
