"""What the coordinator sends down each Session stream, before it is protobuf.

The runtime puts these on each client's session queue; the servicer turns
them into `SessionResponse` messages (`servicer.session_event_to_proto`).
Plain data, no grpc or asyncio.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from fedgrpc.coordinator.state import OpenRound, RoundResult
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
    """A secure-aggregation message for one client (`coordinator.secure_round`)."""

    round_id: int
    payload: ServerPayload


SessionEvent = (
    RoundStartedEvent | RoundResult | HeartbeatReply | SessionEnd | SecAggEvent
)


def round_started_event(current: OpenRound, now_s: float) -> RoundStartedEvent:
    """The RoundStarted for `current`, its deadline moved to the wall clock.

    The engine keeps deadlines on its own (monotonic) clock, `now_s` being
    that clock's current reading; clients only share the wall clock.
    """
    deadline_unix_s = 0.0
    if current.deadline_s is not None:
        deadline_unix_s = time.time() + (current.deadline_s - now_s)
    return RoundStartedEvent(
        current.round_id, current.base_version, current.nonce, deadline_unix_s
    )
