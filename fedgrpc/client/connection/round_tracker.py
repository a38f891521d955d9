"""Rounds as the client sees them: what opened, what closed, and waiting on both.

`RoundTracker` is written by the Session stream (`session.py`) and read by
`DiLoCoClient`'s sync point through `boundary.Connection`. It lives on the
client's background loop and is not thread-safe on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from fedgrpc.errors import CoordinatorUnavailableError, FedGrpcError, ShuttingDownError

T = TypeVar("T")

RoundOutcome = Literal["applied", "skipped"]
MAX_CLOSED_ROUNDS = 1024
"""Closed rounds remembered; a client only ever asks about its recent ones."""


@dataclass(frozen=True, slots=True)
class RoundStart:
    """A round that opened: updates for it must start from `base_version`."""

    round_id: int
    base_version: int
    deadline_unix_s: float
    nonce: bytes = b""
    """The round's nonce; the update pushed for it signs it."""
    selected: bool = True
    """False if client selection left this client out (RoundStarted.not_selected)."""
    train_until_s: float | None = None
    """Deadline mode: this client's monotonic clock reading at which training
    for the round stops (receipt + RoundStarted.seconds_left); None otherwise."""


@dataclass(frozen=True, slots=True)
class RoundEnd:
    """A round that closed; `model_version` is unchanged when skipped."""

    round_id: int
    outcome: RoundOutcome
    model_version: int
    num_updates: int
    reason: str
    run_finished: bool = False
    """The run's last round (`max_rounds`): no round opens after it."""
    privacy_epsilon: float = 0.0
    """The run's ε after this round (central DP; 0 without privacy)."""
    privacy_exhausted: bool = False
    """Not applied: it would have spent past the run's max_epsilon."""


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The run ended (its last round closed): no round will open again."""

    model_version: int
    """The final model's version."""


@dataclass(frozen=True, slots=True)
class StaleBase:
    """The federation applied a round past the caller's base version."""

    model_version: int


class RoundTracker:
    """What the client knows of the coordinator's rounds, plus a way to wait.

    Written by `SessionStream`, read by the sync point. All state changes
    notify one `asyncio.Condition`, and waits re-check their predicate, so
    an event that arrived before a wait began is never missed.
    """

    def __init__(self, model_version: int = 0) -> None:
        self._changed = asyncio.Condition()
        self.latest_started: RoundStart | None = None
        self.closed: dict[int, RoundEnd] = {}
        self.model_version = model_version
        """Newest global model version announced (RoundStarted base or APPLIED)."""
        self.shutdown_reason: str | None = None
        self.failure: FedGrpcError | None = None
        self.run_finished = False
        """A RoundClosed (or Join) said the run's last round closed."""

    async def record_started(self, event: RoundStart) -> None:
        """Note a RoundStarted; its base version is the current model."""
        async with self._changed:
            self.latest_started = event
            self.model_version = max(self.model_version, event.base_version)
            self._changed.notify_all()

    async def record_closed(self, event: RoundEnd) -> None:
        """Note a RoundClosed; an applied round advances the model version."""
        async with self._changed:
            self.closed[event.round_id] = event
            if len(self.closed) > MAX_CLOSED_ROUNDS:
                del self.closed[min(self.closed)]
            if event.outcome == "applied":
                self.model_version = max(self.model_version, event.model_version)
            self.run_finished = self.run_finished or event.run_finished
            self._changed.notify_all()

    async def record_shutdown(self, reason: str) -> None:
        """Note the coordinator's ShutdownNotice; later waits raise."""
        async with self._changed:
            self.shutdown_reason = reason
            self._changed.notify_all()

    async def record_failure(self, error: FedGrpcError) -> None:
        """Note that the stream broke; later waits raise with `error` as cause."""
        async with self._changed:
            self.failure = error
            self._changed.notify_all()

    def sync_due(self, base_version: int) -> bool:
        """Deadline mode: True once the training thread should run its sync point.

        When the open round on `base_version` reached its training deadline,
        or the open round is on another version (we are stale, or sat out:
        the sync point sorts it out), or the stream ended (the sync point
        reconnects). Read from the training thread without the loop: each
        read is of one attribute, atomic under the GIL, and a stale answer
        only moves the sync point by one step.
        """
        if self.failure is not None or self.shutdown_reason is not None:
            return True
        current = self.open_round()
        if current is None:
            return False  # between rounds: keep training until the next opens
        if current.base_version != base_version or current.train_until_s is None:
            return True
        return time.monotonic() >= current.train_until_s

    def open_round(self) -> RoundStart | None:
        """The latest started round if it has not closed yet."""
        started = self.latest_started
        if started is None or started.round_id in self.closed:
            return None
        return started

    async def wait_round_open(
        self,
        base_version: int,
        timeout_s: float,
        *,
        span: bool = False,
        after_round: int = 0,
    ) -> RoundStart | StaleBase | RunFinished:
        """Wait for an open round based on `base_version`, or learn we are stale.

        `span`: we sat out rounds (client selection), so an open round on a
        newer version is ours too: our update spans the rounds we missed.
        `after_round`: only a round with a higher id will do (the one we
        tried is full).

        Returns:
            The open round, or `StaleBase` when a round newer than
            `base_version` was applied (the caller must pull before pushing),
            or `RunFinished` once the run ended and we hold its final model.

        Raises:
            CoordinatorUnavailableError: timeout, or the stream broke.
            ShuttingDownError: the coordinator announced shutdown.
        """

        def ready() -> RoundStart | StaleBase | RunFinished | None:
            current = self.open_round()
            if current is not None and current.round_id <= after_round:
                current = None
            if span and current is not None and current.base_version >= base_version:
                return current
            if span and self.model_version > base_version and not self.run_finished:
                return None  # a round is being applied: wait for the next one
            if self.model_version > base_version:
                return StaleBase(self.model_version)
            if self.run_finished:
                return RunFinished(self.model_version)
            if current is not None and current.base_version == base_version:
                return current
            return None

        return await self._wait(
            ready, f"a round on model version {base_version}", timeout_s
        )

    async def wait_round_closed(self, round_id: int, timeout_s: float) -> RoundEnd:
        """Wait for round `round_id` to close (applied or skipped).

        Raises:
            CoordinatorUnavailableError: timeout, or the stream broke.
            ShuttingDownError: the coordinator announced shutdown.
        """
        return await self._wait(
            lambda: self.closed.get(round_id), f"round {round_id} to close", timeout_s
        )

    async def _wait(
        self, ready: Callable[[], T | None], what: str, timeout_s: float
    ) -> T:
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                while (result := ready()) is None:
                    self._raise_if_ended(what)
                    await self._changed.wait()
                return result
        except TimeoutError as exc:
            raise CoordinatorUnavailableError(
                f"waited {timeout_s:g} s for {what} without news from the "
                "coordinator; check that it is running and has enough clients "
                "(min_clients), or raise ClientConfig.round_wait_s"
            ) from exc

    def _raise_if_ended(self, what: str) -> None:
        # Shutdown first: the stream ending right after a ShutdownNotice is
        # its consequence, not a separate failure.
        if self.shutdown_reason is not None:
            raise ShuttingDownError(
                f"the coordinator is shutting down ({self.shutdown_reason}) while "
                f"waiting for {what}; rejoin when it is back"
            )
        if self.failure is not None:
            raise CoordinatorUnavailableError(
                f"the session stream to the coordinator broke while waiting for "
                f"{what}: {self.failure}; the client cannot follow rounds without "
                "it and re-joins (ClientConfig.reconnect_*)"
            ) from self.failure
