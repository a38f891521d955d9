"""The Session control stream: heartbeats out, round events in.

`SessionStream` keeps the bidirectional Session RPC open as an asyncio task
on the client's background loop: SessionOpen, then a heartbeat every
`heartbeat_interval_s`, then SessionLeave on close. What the coordinator
announces (rounds started and closed, shutdown) lands in a
`round_tracker.RoundTracker`, which the training thread waits on through
`boundary.Connection`. Events of a round mode (secure aggregation's
`secagg_*`) go to the `SessionEvents` handler the link attached, so this
module knows no mode. Everything here runs on the background loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from fedgrpc._proto.v1 import coordinator_pb2
from fedgrpc.client.connection.channel import Credentials
from fedgrpc.client.connection.round_tracker import RoundEnd, RoundStart, RoundTracker
from fedgrpc.client.status import translated
from fedgrpc.errors import CoordinatorUnavailableError, FedGrpcError
from fedgrpc.log import get_logger

if TYPE_CHECKING:
    from fedgrpc._proto.v1.coordinator_pb2_grpc import CoordinatorServiceAsyncStub

log = get_logger(__name__)
LEAVE_TIMEOUT_S = 5.0
"""How long close() waits for the coordinator to end the stream after Leave."""


class SessionEvents(Protocol):
    """What a round mode plugs into the Session stream.

    It gets the events the stream does not handle itself: anything but round
    starts and closes, heartbeat replies and the shutdown notice.
    """

    async def handle(self, response: coordinator_pb2.SessionResponse) -> None:
        """Take one event; ignore kinds it does not know. Runs on the loop."""


def round_end_from_proto(event: coordinator_pb2.RoundClosed) -> RoundEnd:
    """Decode a RoundClosed; anything but APPLIED counts as skipped."""
    applied = event.outcome == coordinator_pb2.ROUND_OUTCOME_APPLIED
    return RoundEnd(
        round_id=event.round_id,
        outcome="applied" if applied else "skipped",
        model_version=event.model_version,
        num_updates=event.num_updates,
        reason=event.reason,
        run_finished=event.run_finished,
        privacy_epsilon=event.privacy_epsilon,
        privacy_exhausted=event.privacy_exhausted,
    )


class SessionStream:
    """The Session RPC as a task: heartbeats out, round events into a tracker."""

    def __init__(
        self,
        stub: CoordinatorServiceAsyncStub,
        credentials: Credentials,
        tracker: RoundTracker,
        heartbeat_interval_s: float,
        *,
        deadline_mode: bool = False,
    ) -> None:
        self._stub = stub
        self._deadline_mode = deadline_mode
        """Rounds announce training seconds left (`RoundStart.train_until_s`)."""
        self._credentials = credentials
        self._tracker = tracker
        self._heartbeat_interval_s = heartbeat_interval_s
        self._leave = asyncio.Event()
        self._leave_reason = ""
        self._leave_final = False
        self._closing = False
        self._call: (
            grpc.aio.StreamStreamCall[
                coordinator_pb2.SessionRequest, coordinator_pb2.SessionResponse
            ]
            | None
        ) = None
        self._task: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[coordinator_pb2.SessionRequest] = asyncio.Queue()
        self.events: SessionEvents | None = None
        """Handles a round mode's events (secure aggregation), if the link has one."""

    def send(self, request: coordinator_pb2.SessionRequest) -> None:
        """Queue a client event (a round mode's reply) for the Session stream."""
        self._outbox.put_nowait(request)

    def start(self) -> None:
        """Open the stream and start consuming it; call on the loop."""
        self._call = self._stub.Session(self._requests())
        self._task = asyncio.get_running_loop().create_task(
            self._consume(self._call), name="fedgrpc-session"
        )

    async def _requests(self) -> AsyncIterator[coordinator_pb2.SessionRequest]:
        credentials = self._credentials
        yield coordinator_pb2.SessionRequest(
            open=coordinator_pb2.SessionOpen(
                client_id=credentials.client_id,
                session_token=credentials.session_token,
            )
        )
        # One pending get survives heartbeat timeouts, so no queued event is lost.
        get: asyncio.Future[Any] | None = None  # Any: a queue get or an event wait
        try:
            while not self._leave.is_set():
                get = get or asyncio.ensure_future(self._outbox.get())
                leave: asyncio.Future[Any] = asyncio.ensure_future(self._leave.wait())
                done, _ = await asyncio.wait(
                    {get, leave},
                    timeout=self._heartbeat_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                leave.cancel()
                if get in done:
                    outgoing: coordinator_pb2.SessionRequest = get.result()
                    get = None
                    yield outgoing
                elif not done:
                    yield coordinator_pb2.SessionRequest(
                        heartbeat=coordinator_pb2.Heartbeat(sent_unix_s=time.time())
                    )
        finally:
            if get is not None:
                get.cancel()
        yield coordinator_pb2.SessionRequest(
            leave=coordinator_pb2.SessionLeave(
                reason=self._leave_reason, final=self._leave_final
            )
        )

    async def _consume(
        self, call: AsyncIterable[coordinator_pb2.SessionResponse]
    ) -> None:
        try:
            with translated("Session"):
                async for response in call:
                    await self._dispatch(response)
        except FedGrpcError as exc:
            if not self._closing:
                log.warning(
                    "session_broken",
                    client=self._credentials.client_id,
                    reason=str(exc),
                )
                await self._tracker.record_failure(exc)
            return
        except Exception as exc:  # a bug here must not leave waits hanging
            log.error(
                "session_failed", client=self._credentials.client_id, exc_info=exc
            )
            await self._tracker.record_failure(FedGrpcError(f"session failed: {exc}"))
            return
        if not self._closing:
            log.warning("session_ended", client=self._credentials.client_id)
            await self._tracker.record_failure(
                CoordinatorUnavailableError("the coordinator ended the session stream")
            )

    async def _dispatch(self, response: coordinator_pb2.SessionResponse) -> None:
        event = response.WhichOneof("event")
        if event == "round_started":
            started = response.round_started
            log.debug(
                "round_started",
                round=started.round_id,
                base_version=started.base_version,
            )
            await self._tracker.record_started(
                RoundStart(
                    started.round_id,
                    started.base_version,
                    started.deadline_unix_s,
                    started.round_nonce,
                    selected=not started.not_selected,
                    train_until_s=(
                        time.monotonic() + started.seconds_left
                        if self._deadline_mode
                        else None
                    ),
                )
            )
        elif event == "round_closed":
            await self._tracker.record_closed(
                round_end_from_proto(response.round_closed)
            )
        elif event == "shutdown":
            log.warning("coordinator_shutdown", reason=response.shutdown.reason)
            await self._tracker.record_shutdown(response.shutdown.reason)
        elif event not in (None, "heartbeat") and self.events is not None:
            await self.events.handle(response)

    async def close(
        self, reason: str, timeout_s: float = LEAVE_TIMEOUT_S, *, final: bool = False
    ) -> None:
        """Send SessionLeave, end our side, and wait for the stream to finish.

        `final`: this client never comes back under its key (a throwaway key
        closing), so the coordinator may forget its record. Cancels the call
        if the coordinator does not end it within `timeout_s`. Safe to call
        twice, or after the stream broke.
        """
        self._closing = True
        self._leave_reason, self._leave_final = reason, final
        self._leave.set()
        task, call = self._task, self._call
        if task is None or call is None:
            return
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            call.cancel()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
