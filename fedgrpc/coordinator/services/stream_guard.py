"""Bounds on the coordinator's streams, applied around the servicer's handlers.

Before a stream says who it is, nothing about it is authenticated, so
nothing about it may be unbounded either. `StreamGuard` wraps the three
streaming RPCs of CoordinatorService at registration (`guarded_handlers`)
so the servicer keeps to its job (which message may come when):

- counts: Session, PushUpdate and PullModel streams open per connection
  (`context.peer()`, one HTTP/2 connection) and in total; one more is
  refused with RESOURCE_EXHAUSTED naming the setting;
- deadlines: a Session or PushUpdate that sends no first message within
  `first_message_timeout_s`, or a PushUpdate silent between messages for
  `stream_idle_timeout_s`, ends with DEADLINE_EXCEEDED. The push is then
  abandoned by ingest like any broken push, so the round does not wait on it;
- pulls: once its model version is ready, a PullModel has `pull_timeout_s`
  to deliver it; a client that stopped reading (its HTTP/2 window full, the
  server's write blocked) is cancelled and lets go of the version it pinned.

Each deadline wraps one read (or the writes of one pull), never a span across
a `yield`: a cancellation must land in the frame that set the timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from fedgrpc.config import CoordinatorConfig
from fedgrpc.config.limits import StreamLimits
from fedgrpc.coordinator.services import status
from fedgrpc.errors import FedGrpcError, StreamIdleError, TooLargeError
from fedgrpc.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]
StreamHandler = Callable[..., Any]
"""A servicer method taking (request stream, context)."""
PullHandler = Callable[..., AsyncIterator[Any]]
"""A servicer method taking (request, context) and yielding the responses."""


class BoundedReads(AsyncIterator[T]):
    """A request stream whose reads each have a deadline.

    The first read waits at most `first_s` (None: the stream's first message
    is not bounded here), the later ones `idle_s` each (None: unbounded). An
    expired stream stays expired: later reads raise at once, so a caller that
    drains a refused stream does not wait a second deadline.
    """

    def __init__(
        self,
        stream: AsyncIterator[T],
        rpc: str,
        first_s: float,
        idle_s: float | None,
    ) -> None:
        self._stream = stream
        self._rpc = rpc
        self._first_s = first_s
        self._idle_s = idle_s
        self._reads = 0
        self._expired = ""
        """Why the stream expired ("" : it has not). A message, not the
        exception: a stored exception's traceback would keep this frame alive."""

    def __aiter__(self) -> BoundedReads[T]:
        return self

    async def __anext__(self) -> T:
        if self._expired:
            raise StreamIdleError(self._expired)
        first = self._reads == 0
        self._reads += 1
        limit = self._first_s if first else self._idle_s
        if limit is None:
            return await anext(self._stream)
        try:
            async with asyncio.timeout(limit):
                return await anext(self._stream)
        except TimeoutError:
            self._expired = self._idle_message(first, limit)
            raise StreamIdleError(self._expired) from None

    def _idle_message(self, first: bool, limit: float) -> str:
        if first:
            return (
                f"{self._rpc} sent no first message within "
                f"first_message_timeout_s={limit:g}; a stream must open at once"
            )
        return (
            f"{self._rpc} sent nothing for stream_idle_timeout_s={limit:g} "
            f"after message {self._reads - 1}; the push is abandoned, send the "
            "update again without pausing between chunks"
        )


class StreamGuard:
    """Stream counts and deadlines for one coordinator (module docstring)."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.limits: StreamLimits = config.stream_limits(config.max_clients)
        self.first_s = config.first_message_timeout_s
        self.idle_s = config.stream_idle_timeout_s
        self.pull_s = config.pull_timeout_s
        self.open_total = 0
        """Guarded streams open now."""
        self._per_peer: dict[str, int] = {}

    def open_on(self, peer: str) -> int:
        """Guarded streams open now on connection `peer`."""
        return self._per_peer.get(peer, 0)

    def acquire(self, peer: str, rpc: str) -> Callable[[], None]:
        """Take one stream slot for `peer`; returns the call that gives it back.

        Raises:
            TooLargeError: the connection's or the coordinator's cap is reached.
        """
        limits, held = self.limits, self.open_on(peer)
        if self.open_total >= limits.total:
            raise TooLargeError(
                f"{rpc} refused: {self.open_total} streams are open, the "
                f"coordinator's cap (max_streams_total={limits.total}); retry later"
            )
        if held >= limits.per_connection:
            raise TooLargeError(
                f"{rpc} refused: this connection holds {held} streams, the cap "
                f"(max_streams_per_connection={limits.per_connection}); close some "
                "or open another connection"
            )
        self.open_total += 1
        self._per_peer[peer] = held + 1

        def release() -> None:
            self.open_total -= 1
            left = self._per_peer.pop(peer) - 1
            if left:
                self._per_peer[peer] = left

        return release

    async def _acquire_or_abort(self, context: Context, rpc: str) -> Callable[[], None]:
        """`acquire` for `context`'s connection; a refusal ends the call."""
        try:
            return self.acquire(context.peer(), rpc)
        except TooLargeError as exc:
            await status.abort(context, exc)

    def session(self, handler: StreamHandler) -> StreamHandler:
        """Session with a slot and a first-message deadline.

        Heartbeats and `session_timeout_s` bound the silence after it.
        """

        async def guarded(
            requests: AsyncIterator[Any], context: Context
        ) -> AsyncIterator[Any]:
            release = await self._acquire_or_abort(context, "Session")
            reads = BoundedReads(requests, "Session", self.first_s, None)
            try:
                async for response in handler(reads, context):
                    yield response
            except FedGrpcError as exc:  # the first read, before the handler's try
                await status.abort(context, exc)
            finally:
                release()

        return guarded

    def push(self, handler: StreamHandler) -> StreamHandler:
        """PushUpdate with a slot, a first-message and an idle deadline."""

        async def guarded(requests: AsyncIterator[Any], context: Context) -> Any:
            release = await self._acquire_or_abort(context, "PushUpdate")
            reads = BoundedReads(requests, "PushUpdate", self.first_s, self.idle_s)
            try:
                return await handler(reads, context)
            finally:
                release()

        return guarded

    def pull(self, handler: PullHandler) -> Callable[[Any, Context], Awaitable[None]]:
        """PullModel with a slot and `pull_timeout_s` from its first message.

        Written with `context.write` rather than as a generator, so the
        deadline covers the writes (where a client that stopped reading
        blocks us) and the handler's generator is closed here, which
        releases the version it holds.
        """

        async def guarded(request: Any, context: Context) -> None:
            release = await self._acquire_or_abort(context, "PullModel")
            # The slot goes back when the call ends, which for a stalled pull
            # is after this handler (see `_end_stalled`).
            # grpc-stubs type the callback as a class no function matches.
            context.add_done_callback(lambda _: release())  # type: ignore[arg-type]
            messages = handler(request, context)
            try:
                await self._deliver(messages, context)
            finally:
                if isinstance(messages, AsyncGenerator):
                    await messages.aclose()  # releases the model version it holds

        return guarded

    async def _deliver(self, messages: AsyncIterator[Any], context: Context) -> None:
        """Write every message; the deadline starts once the first is ready."""
        first = await anext(messages, None)  # waits for the version: unbounded
        if first is None:
            return
        try:
            async with asyncio.timeout(self.pull_s):
                await context.write(first)
                async for message in messages:
                    await context.write(message)
        except TimeoutError:
            reason = (
                f"PullModel did not finish within pull_timeout_s={self.pull_s:g} "
                "after its version was ready (the client stopped reading?); pull again"
            )
            await _end_stalled(context, reason)


async def _end_stalled(context: Context, reason: str) -> NoReturn:
    """End a call whose last write is stuck behind a client that stopped reading.

    No status can reach such a client: it would queue behind the data the
    client does not read, and grpc sends none while a write is pending
    (`context.abort` would wait for the client's own deadline). So the
    handler ends as cancelled: the model version is released at once (the
    caller closes the pull), while grpc keeps the call, with the one message
    in flight, until the client reads, cancels or disconnects; until then it
    still holds its stream slot (`StreamGuard.pull`).
    """
    log.warning("pull_timed_out", peer=context.peer(), reason=reason)
    raise asyncio.CancelledError(reason)
