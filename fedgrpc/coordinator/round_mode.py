"""A round mode: what a kind of round adds to the plain one, held by the runtime.

Secure aggregation is the one mode today (`secure.mode.SecureMode`). The
runtime holds at most one mode and calls it at the few points where a round
differs (Join, sessions, which sink takes an update, closing, status); the
plain path never imports a mode's package. A mode is built from a
`RoundContext`: the collaborators it needs, not the runtime.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.ingest.sinks import UpdateSink
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.records import Run
from fedgrpc.coordinator.rounds.registry import ClientRegistry
from fedgrpc.coordinator.sessions import SessionQueue, Sessions
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.domain.requests import JoinInfo, UpdateHeaderInfo
from fedgrpc.wire.secagg import ClientPayload

OTHER_REASON = "other"
"""A mode round that ended for a reason status has no name for."""


@dataclass(frozen=True, slots=True)
class RoundContext:
    """What a round mode may use of the coordinator it runs in."""

    config: CoordinatorConfig
    clock: Callable[[], float]
    run: Run
    engine: RoundEngine
    clients: ClientRegistry
    sessions: Sessions
    identity: PrivateKey
    """The coordinator's identity key (a mode signs what it announces)."""
    metrics: CollectorRegistry
    """The coordinator's Prometheus registry (a mode adds its own metrics)."""
    close_round: Callable[[], Awaitable[None]]
    """Close the open round if it is done (`CoordinatorRuntime.maybe_close_round`)."""


class ModeRoundRecord(Protocol):
    """One round as the mode ran it, for status."""

    @property
    def participants(self) -> int:
        """Clients the round started with."""

    @property
    def survivors(self) -> int:
        """Clients whose update reached the sum."""

    @property
    def positions(self) -> int:
        """Coordinates summed (0: every one)."""

    @property
    def unmask_s(self) -> float:
        """Seconds recovering the sum took."""

    @property
    def abort_reason(self) -> str:
        """Why the mode voided the round ("" if it did not)."""


class RoundMode(Protocol):
    """The points where a mode's rounds differ from plain ones."""

    def check_join(self, request: JoinInfo) -> None:
        """Refuse a client that cannot take part in this mode's rounds."""

    def session_opened(self, client_id: str, queue: SessionQueue) -> None:
        """A client's Session opened (the mode may send it the round's state)."""

    def session_lost(self, client_id: str) -> None:
        """A client's live Session ended: it leaves the mode's round."""

    def sink_for(self, header: UpdateHeaderInfo) -> UpdateSink | None:
        """The mode's sink for this update, None for the plain round's.

        Raises a `FedGrpcError` for an update the mode refuses outright.
        """

    def receive(self, client_id: str, round_id: int, payload: ClientPayload) -> None:
        """One mode message a client sent on its Session."""

    async def before_close(self) -> None:
        """Advance the mode's round (called before the runtime may close one)."""

    async def after_close(self) -> None:
        """A round just closed and the next opened."""

    def round_record(self, round_id: int) -> ModeRoundRecord | None:
        """How the mode ran a recent round, None if it did not."""

    @property
    def guard_trips(self) -> int:
        """Rounds the mode's divergence guard refused."""

    @property
    def dense_fallback_rounds(self) -> int:
        """Sparse rounds the mode ran dense instead."""

    def reset_guard(self) -> int:
        """Clear the mode's divergence guard history; the norms dropped."""


ModeFactory = Callable[[RoundContext], RoundMode]
"""Builds a mode for a runtime (the runtime calls it once, when built)."""
