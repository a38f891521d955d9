"""The client's one sync/async boundary: `Connection`, and the loop behind it.

The user's training loop is synchronous. Every grpc.aio object (channel,
calls, the Session task) lives on one asyncio loop running on one daemon
thread owned by `BackgroundLoop`. `Connection` is the only thing the
training thread holds: each of its methods runs one coroutine of the
current `CoordinatorLink` on that loop and blocks for the result, bounded
by the call's own deadline plus `BACKSTOP_S`. No grpc object is ever
touched from two threads, and nothing above this module sees a coroutine.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import torch

from fedgrpc.client.connection.join import (
    ClientIdentity,
    Federation,
    JoinSettings,
    check_same_federation,
)
from fedgrpc.client.connection.link import Attach, CoordinatorLink
from fedgrpc.client.connection.pull import PulledModel
from fedgrpc.client.connection.push import PushResult, UpdateEncoder, UpdateMeta
from fedgrpc.client.connection.round_tracker import (
    RoundEnd,
    RoundStart,
    RunFinished,
    StaleBase,
)
from fedgrpc.client.connection.session import LEAVE_TIMEOUT_S
from fedgrpc.config import ClientConfig
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.errors import CoordinatorUnavailableError, IncompatibleClientError
from fedgrpc.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")

BACKSTOP_S = 10.0
"""Slack on top of each call's own deadline before the loop call is abandoned."""
_CLOSE_TIMEOUT_S = 10.0


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


def call(loop: BackgroundLoop, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
    """Run `coro` on `loop`; a hung call becomes `CoordinatorUnavailableError`.

    Every coroutine bounds its own RPCs by `timeout_s`; the backstop only
    fires if something below ignores its deadline.
    """
    try:
        return loop.run(coro, timeout_s + BACKSTOP_S)
    except TimeoutError as exc:
        raise CoordinatorUnavailableError(
            f"a call to the coordinator did not finish within {timeout_s:g} s"
        ) from exc


class Connection:
    """The training thread's handle on the coordinator: synchronous calls only.

    Owns the background loop and the current link; `rejoin` replaces the
    link after a fault, and every later call goes to the new one. Thread
    safety: call from one thread (the training loop).
    """

    def __init__(
        self,
        target: str,
        spec: ModelSpec,
        settings: JoinSettings,
        config: ClientConfig,
        attach: Attach | None = None,
        identity: ClientIdentity | None = None,
    ) -> None:
        """Start the loop; nothing is dialled before `join`.

        `attach` is given to every link this connection makes (see `Attach`);
        `identity` is the key the first Join uses (None: `config`'s).
        """
        self._identity = identity
        self.target, self._spec, self._settings = target, spec, settings
        self._config, self._attach = config, attach
        self._link: CoordinatorLink | None = None
        self._loop = BackgroundLoop()
        self._loop.start()

    @property
    def link(self) -> CoordinatorLink:
        """The current link (for its credentials and identity; async inside)."""
        if self._link is None:
            raise RuntimeError("Connection used before a successful join()")
        return self._link

    @property
    def client_id(self) -> str:
        """Id the coordinator assigned at the last Join."""
        return self.link.credentials.client_id

    def join(self) -> Federation:
        """The first Join, retrying while unreachable for `connect_timeout_s`.

        Raises:
            See `CoordinatorLink.connect`.
        """
        config = self._config
        connect = CoordinatorLink.connect(
            self.target, self._spec, self._settings, config,
            attach=self._attach, identity=self._identity,
        )  # fmt: skip
        wait_s = config.connect_timeout_s + config.rpc_timeout_s
        self._link, federation = call(self._loop, connect, wait_s)
        self._spec = self._link.spec  # the federation's, for every re-join
        return federation

    def rejoin(self, joined: Federation) -> Federation:
        """One re-Join attempt with the same key, pinning the coordinator's.

        On success the new link replaces the old one (which the caller has
        dropped). `joined` is what the first Join said: a coordinator that
        came back with another H, codec or chunk size is refused.

        Raises:
            CoordinatorUnavailableError, ShuttingDownError: still away.
            IncompatibleClientError: it came back with other settings.
            FedGrpcError: a permanent refusal (unknown key, other coordinator).
        """
        config = self._config
        connect = CoordinatorLink.connect(
            self.target,
            self._spec,
            self._settings,
            config,
            self.link.resume_state(),
            attach=self._attach,
        )
        link, federation = call(self._loop, connect, config.rpc_timeout_s * 2)
        try:
            check_same_federation(joined, federation)
        except IncompatibleClientError:
            call(self._loop, link.close("incompatible"), LEAVE_TIMEOUT_S)
            raise
        self._link = link
        return federation

    def drop(self, reason: str) -> None:
        """Leave and close the current link after a fault; its errors are moot."""
        try:
            call(self._loop, self.link.close(reason), LEAVE_TIMEOUT_S)
        except Exception as exc:  # a dead channel may fail to close cleanly
            log.debug("link_close_failed", reason=str(exc))

    def seed(
        self, flat: torch.Tensor, chunk_bytes: int, shard: tuple[int, int] = (0, 0)
    ) -> PushResult | None:
        """Upload the initial weights (a shard's range: `shard`); None if late."""
        link = self.link
        return call(
            self._loop,
            link.seed(flat, chunk_bytes, shard),
            link.push_timeout_s(chunk_bytes),
        )

    def pull(
        self,
        min_version: int,
        buffer: torch.Tensor,
        wait_s: float,
        chunk_bytes: int,
        byte_range: tuple[int, int] | None = None,
        held_version: int | None = None,
    ) -> PulledModel:
        """Weights of at least `min_version` into `buffer` (`CoordinatorLink.pull`)."""
        link = self.link
        return call(
            self._loop,
            link.pull(
                min_version, buffer, wait_s, chunk_bytes, byte_range, held_version
            ),
            link.pull_timeout_s(wait_s, chunk_bytes),
        )

    def push(
        self,
        meta: UpdateMeta,
        delta: torch.Tensor,
        chunk_bytes: int,
        encoder: UpdateEncoder | None,
    ) -> PushResult:
        """Push one update: raw float32, or through `encoder` if there is one."""
        link = self.link
        push = (
            link.push(meta, delta, chunk_bytes)
            if encoder is None
            else link.push_compressed(encoder, meta, delta)
        )
        return call(self._loop, push, link.push_timeout_s(chunk_bytes))

    def wait_round_open(
        self,
        base_version: int,
        wait_s: float,
        *,
        span: bool = False,
        after_round: int = 0,
    ) -> RoundStart | StaleBase | RunFinished:
        """See `RoundTracker.wait_round_open`."""
        tracker = self.link.tracker
        waiting = tracker.wait_round_open(
            base_version, wait_s, span=span, after_round=after_round
        )
        return call(self._loop, waiting, wait_s)

    def sync_due(self, base_version: int) -> bool:
        """Deadline mode: see `RoundTracker.sync_due` (no loop round trip)."""
        return self.link.tracker.sync_due(base_version)

    def wait_round_closed(self, round_id: int, wait_s: float) -> RoundEnd:
        """See `RoundTracker.wait_round_closed`."""
        tracker = self.link.tracker
        return call(self._loop, tracker.wait_round_closed(round_id, wait_s), wait_s)

    def close(self) -> None:
        """Leave the session, close the channel, stop the loop. Idempotent.

        With a throwaway key the leave is final: the coordinator forgets
        this client, which could never come back under that key.
        """
        try:
            link = self._link
            if link is not None:
                leave = link.close("client closed", final=link.identity.ephemeral)
                self._loop.run(leave, LEAVE_TIMEOUT_S + BACKSTOP_S)
        except Exception as exc:  # closing must not mask the caller's own error
            log.warning("client_close_failed", reason=str(exc))
        finally:
            try:
                self._loop.close()
            except RuntimeError as exc:  # collected on the loop's own thread
                log.warning("client_close_failed", reason=str(exc))
