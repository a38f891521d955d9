"""The Session streams: what the coordinator sends down them, and their queues.

Every open Session has one event queue. The runtime (and a round mode such as
secure aggregation) put events on it through `Sessions`; the servicer turns
them into `SessionResponse` messages (`services.coordinator`). The events are
plain data, before they are protobuf. Merged from `events.py` and the queue
bookkeeping the runtime used to keep inline: one owner for the streams.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from fedgrpc.coordinator.rounds.records import OpenRound, RoundResult
from fedgrpc.wire.secagg import ServerPayload


@dataclass(frozen=True, slots=True)
class RoundStartedEvent:
    """A round opened; sent to every session."""

    round_id: int
    base_version: int
    nonce: bytes
    """The round's nonce; its updates sign it."""
    deadline_unix_s: float = 0.0
    """When the round stops taking new updates (wall clock, seconds since the
    epoch); 0 until its first update commits, which starts the deadline."""
    not_selected: bool = False
    """The receiving client was left out of this round by client selection."""
    seconds_left: float = 0.0
    """Deadline mode: training seconds the round has left (0 otherwise)."""


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """The answer to one client heartbeat, as coordinator.proto promises.

    Lets a client (in any language) see that the coordinator still reads its
    stream, not merely that the connection is up.
    """

    sent_unix_s: float
    """The coordinator's wall clock when it answered (seconds since the epoch)."""


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """Ends one session stream, and why.

    `shutdown` sends the client a ShutdownNotice; `evicted` (timed out or
    replaced) ends the stream with UNAVAILABLE so the client reconnects;
    `client_left` just ends it.
    """

    reason: str
    cause: Literal["shutdown", "evicted", "client_left"]


@dataclass(frozen=True, slots=True)
class SecAggEvent:
    """A secure-aggregation message for one client (`secure.masked_round`)."""

    round_id: int
    payload: ServerPayload


SessionEvent = (
    RoundStartedEvent | RoundResult | HeartbeatReply | SessionEnd | SecAggEvent
)


def round_started_event(
    current: OpenRound, now_s: float, client_id: str = "", seconds_left: float = 0.0
) -> RoundStartedEvent:
    """The RoundStarted for `current`, its deadline moved to the wall clock.

    The engine keeps deadlines on its own (monotonic) clock, `now_s` being
    that clock's current reading; clients only share the wall clock.
    `seconds_left`: deadline mode's training time left (`pacing`).
    """
    deadline_unix_s = 0.0
    if current.deadline_s is not None:
        deadline_unix_s = time.time() + (current.deadline_s - now_s)
    left_out = current.selected is not None and client_id not in current.selected
    return RoundStartedEvent(
        current.round_id, current.base_version, current.nonce, deadline_unix_s,
        not_selected=left_out, seconds_left=seconds_left,
    )  # fmt: skip


SessionQueue = asyncio.Queue[SessionEvent]


class Sessions:
    """The open Session streams by client id; event-loop side only."""

    def __init__(self) -> None:
        self._queues: dict[str, SessionQueue] = {}

    def open(self, client_id: str) -> SessionQueue:
        """A new stream's queue; a previous stream of the client is evicted."""
        previous = self._queues.get(client_id)
        if previous is not None:
            previous.put_nowait(SessionEnd("replaced by a newer session", "evicted"))
        queue: SessionQueue = asyncio.Queue()
        self._queues[client_id] = queue
        return queue

    def is_current(self, client_id: str, queue: SessionQueue) -> bool:
        """True if `queue` is the client's live stream (not one it replaced)."""
        return self._queues.get(client_id) is queue

    def close(self, client_id: str, queue: SessionQueue) -> bool:
        """Forget `queue` if it is the client's live stream; True if it was."""
        if not self.is_current(client_id, queue):
            return False
        del self._queues[client_id]
        return True

    def send(self, client_id: str, event: SessionEvent) -> None:
        """Put `event` on one client's stream, if it has one open."""
        queue = self._queues.get(client_id)
        if queue is not None:
            queue.put_nowait(event)

    def broadcast(self, event: SessionEvent) -> None:
        """Put `event` on every open stream."""
        for queue in self._queues.values():
            queue.put_nowait(event)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._queues

    def __iter__(self) -> Iterator[str]:
        return iter(self._queues)
