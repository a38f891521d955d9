"""GetStatus as JSON for the HTTP server, and the live feed of it (server-sent events).

The HTTP server answers on its own threads, but the runtime's state belongs
to the event loop (a round closing rewrites the history and the client
records between two awaits). So every read goes to the loop
(`run_coroutine_threadsafe`) and comes back as finished bytes: no HTTP
thread ever walks the runtime's lists while the loop changes them, and a
loop that stopped answering shows up at `/healthz`.

The feed is pushed, not polled: one task on the loop sleeps on the
runtime's wake-up condition (`CoordinatorRuntime.wait_until`, woken when a
round closes, a new model is announced so a round opens, a session closes,
or the coordinator stops), builds one snapshot when what a dashboard shows
changed, and hands the same bytes to every open stream. Bursts (many tiny
rounds a second) coalesce: at most one snapshot per `MIN_GAP_S`, and a
stream that falls behind keeps only the newest few. Ten open dashboards
cost one snapshot per round, not ten.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from google.protobuf.json_format import MessageToDict

from fedgrpc.coordinator.rounds.records import Phase
from fedgrpc.coordinator.runtime import CoordinatorRuntime
from fedgrpc.coordinator.services.admin import build_status
from fedgrpc.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")
KEEPALIVE_S = 15.0
"""Seconds between comment lines on an idle event stream: proxies and load
balancers close connections idle for 30-60 s, and a dead peer is found on
the next write."""
MIN_GAP_S = 0.25
"""Shortest time between two snapshots pushed to the streams."""
LOOP_TIMEOUT_S = 5.0
"""How long an HTTP thread waits for the event loop to answer."""
BACKLOG = 4
"""Snapshots a slow stream may hold unsent; older ones are dropped (each
carries the whole state, so only the newest matters)."""
_END = b""


class LoopUnavailableError(Exception):
    """The event loop did not answer in time (or is closed): report 503."""


class EventStream:
    """One open /api/v1/events response: the snapshots to send, in order."""

    def __init__(self, release: Callable[[EventStream], None]) -> None:
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=BACKLOG)
        self._release = release

    def push(self, snapshot: bytes) -> None:
        """Queue `snapshot` (any thread); drops the oldest when full."""
        while True:
            try:
                self._queue.put_nowait(snapshot)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()

    def cancel(self) -> None:
        """Give the slot back for a stream that will never be iterated."""
        self._release(self)

    def events(self, first: bytes, keepalive_s: float) -> Iterator[bytes]:
        """The SSE body: `first`, then each pushed snapshot, comments when idle.

        Ends when the feed stops; the slot is freed however it ends (the
        browser closed the tab: the write fails and wsgiref closes us).
        """
        try:
            yield b"retry: 3000\n\n" + _sse(first)
            while True:
                try:
                    snapshot = self._queue.get(timeout=keepalive_s)
                except queue.Empty:
                    yield b": keep-alive\n\n"
                    continue
                if not snapshot:  # _END: the feed stopped
                    return
                yield _sse(snapshot)
        finally:
            self._release(self)


def _sse(snapshot: bytes) -> bytes:
    """One `status` event (JSON has no raw newlines: one data line)."""
    return b"event: status\ndata: " + snapshot + b"\n\n"


class StatusFeed:
    """Status snapshots for HTTP threads, and the streams that receive them."""

    def __init__(
        self,
        runtime: CoordinatorRuntime,
        loop: asyncio.AbstractEventLoop,
        max_streams: int,
    ) -> None:
        self.runtime = runtime
        self.loop = loop
        self.max_streams = max_streams
        self.keepalive_s = KEEPALIVE_S
        self._streams: set[EventStream] = set()
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    # -- on the event loop ---------------------------------------------------

    def start(self) -> None:
        """Start watching the runtime (call on the loop)."""
        self._task = self.loop.create_task(self._watch())

    async def stop(self) -> None:
        """Stop watching; every open stream ends after what it holds."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.push(_END)

    def _key(self) -> tuple[Any, ...]:
        """What a dashboard shows changed when this did."""
        runtime, engine = self.runtime, self.runtime.engine
        current = engine.current
        return (
            current.round_id if current is not None else 0,
            engine.phase,
            engine.model.version,
            len(engine.history),
            engine.history[-1].round_id if engine.history else 0,
            len(runtime.registry.connected()),
            runtime.durable.serving,
            runtime.run.stopping,
        )

    async def _watch(self) -> None:
        seen = [self._key()]
        while True:
            await self.runtime.wait_until(lambda: self._key() != seen[0])
            await asyncio.sleep(MIN_GAP_S)  # coalesce a burst into one snapshot
            seen[0] = self._key()
            try:
                snapshot = self.snapshot_now()
            except Exception:  # the feed must outlive one bad snapshot
                log.exception("status_snapshot_failed")
                continue
            with self._lock:
                streams = list(self._streams)
            for stream in streams:
                stream.push(snapshot)

    def snapshot_now(self) -> bytes:
        """GetStatus with every client, as compact JSON (call on the loop).

        int64 fields are JSON strings under proto3's JSON mapping; the page
        converts them.
        """
        status = MessageToDict(
            build_status(self.runtime),
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        return json.dumps(status, separators=(",", ":")).encode()

    def _readiness(self) -> str:
        """Empty when serving, else why not (call on the loop)."""
        runtime = self.runtime
        if runtime.run.stopping or runtime.engine.phase is Phase.STOPPING:
            return "the coordinator is shutting down"
        if runtime.engine.model.published is None:
            return "no model yet: waiting for the initial weights"
        if not runtime.durable.serving:
            return f"NOT_SERVING: {runtime.durable.not_serving_reason}"
        return ""

    # -- on HTTP threads -----------------------------------------------------

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """`fn()` run on the event loop, its result handed to this thread.

        Raises:
            LoopUnavailableError: the loop is closed or took over `LOOP_TIMEOUT_S`.
        """

        async def call() -> T:
            return fn()

        try:
            future = asyncio.run_coroutine_threadsafe(call(), self.loop)
        except RuntimeError as exc:  # the loop is closed
            raise LoopUnavailableError("the coordinator's event loop stopped") from exc
        try:
            return future.result(LOOP_TIMEOUT_S)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise LoopUnavailableError(
                f"the coordinator's event loop did not answer in {LOOP_TIMEOUT_S:g} s"
            ) from exc

    def snapshot(self) -> bytes:
        """The status JSON now (from any thread but the loop's)."""
        return self._on_loop(self.snapshot_now)

    def alive(self) -> str:
        """Empty if the event loop answers, else why not (liveness)."""
        try:
            self._on_loop(lambda: None)
        except LoopUnavailableError as exc:
            return str(exc)
        return ""

    def readiness(self) -> str:
        """Empty if the coordinator serves models, else why not (readiness)."""
        try:
            return self._on_loop(self._readiness)
        except LoopUnavailableError as exc:
            return str(exc)

    def subscribe(self) -> EventStream | None:
        """A new stream, or None when `max_streams` are open already."""
        with self._lock:
            if len(self._streams) >= self.max_streams:
                return None
            stream = EventStream(self._unsubscribe)
            self._streams.add(stream)
            return stream

    def _unsubscribe(self, stream: EventStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    @property
    def open_streams(self) -> int:
        """Event streams open now."""
        with self._lock:
            return len(self._streams)
