"""Surviving a lost coordinator: backoff, re-join, and resuming the sync point.

A channel that breaks, UNAVAILABLE, a coordinator draining or restarting
from its checkpoint: none of these should reach the user's training loop.
`Reconnector.run` wraps each sync point. On a transient fault it closes the
dead link and re-joins with the same identity key (the coordinator finds the
client's record by key, so the id and credit survive a restart, see
`coordinator.registry.ClientRegistry.admit`), pinning the coordinator key it
saw before. Then `SyncPoint.resume` decides from the coordinator's model
version what became of the update in flight.

Attempts follow `connection.channel.Backoff` (exponential, jittered,
capped). One sync point retries for at most `reconnect_max_s`; if the
coordinator is still away, `step()` returns ("offline") and training
continues locally, with the next sync point trying again. Only after
`reconnect_give_up_s` in total does `step()` raise. Permanent refusals (an
unknown key at Join, an incompatible codec or H, a different coordinator
key) raise at once.

This is round logic: the re-Join itself is `Connection.rejoin`. Runs on
the training thread.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from fedgrpc.client.connection.channel import Backoff
from fedgrpc.client.sync import SyncOutcome, SyncPoint
from fedgrpc.config import ClientConfig
from fedgrpc.errors import (
    CoordinatorUnavailableError,
    FedGrpcError,
    ShuttingDownError,
    UnknownClientError,
)
from fedgrpc.log import get_logger

log = get_logger(__name__)


def is_transient(exc: FedGrpcError) -> bool:
    """True for faults a re-join can cure, raised *during* a sync point.

    UNAVAILABLE or a deadline (`CoordinatorUnavailableError`, also a broken
    Session stream), a draining coordinator (`ShuttingDownError`), and
    UNAUTHENTICATED on push or pull: after a restart the session token is
    unknown (tokens are not checkpointed). At Join itself UNAUTHENTICATED is
    permanent, which `Reconnector` handles by not catching it there.
    """
    return isinstance(
        exc, CoordinatorUnavailableError | ShuttingDownError | UnknownClientError
    )


class Reconnector:
    """Runs sync points through transient faults; see the module docstring."""

    def __init__(
        self,
        target: str,
        config: ClientConfig,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Retry per `config.reconnect_*`; inject `rng`, `clock`, `sleep` in tests.

        `target` is the coordinator's address, for the give-up message.
        """
        self._target, self._config = target, config
        self._clock, self._sleep = clock, sleep
        self.backoff = Backoff(config.reconnect_initial_s, config.reconnect_max_s, rng)
        self.lost_at_s: float | None = None
        """When the coordinator was lost (clock seconds); None while connected."""
        self._cause: FedGrpcError | None = None
        """The fault that began the current outage."""
        self._last_error: FedGrpcError | None = None

    def run(
        self, sync: SyncPoint, action: Callable[[], SyncOutcome] | None = None
    ) -> SyncOutcome:
        """One sync point (or `action`, e.g. a streaming merge), surviving faults.

        Returns:
            The sync point's outcome, or "offline" when the coordinator is
            still away after `reconnect_max_s` of retrying here.

        Raises:
            CoordinatorUnavailableError, ShuttingDownError: the coordinator
                has been away for `reconnect_give_up_s`.
            FedGrpcError: a permanent refusal (see `is_transient`), at once.
        """
        started, immediate = self._clock(), True
        while True:
            if self.lost_at_s is not None:
                if not self._reconnect(sync, started, immediate):
                    return "offline"
                immediate = False  # a relapse in this sync point waits first
            try:
                if self.lost_at_s is not None:
                    outcome = sync.resume()
                else:
                    outcome = (action or sync.run)()
            except FedGrpcError as exc:
                if not is_transient(exc):
                    raise
                self._lose(sync, exc)
                continue
            if self.lost_at_s is not None:
                seconds = round(self._clock() - self.lost_at_s, 3)
                log.info(
                    "coordinator_recovered", client=sync.client_id, seconds=seconds
                )
            self.lost_at_s = None
            self.backoff.reset()
            return outcome

    def _lose(self, sync: SyncPoint, exc: FedGrpcError) -> None:
        """Note the fault and drop the dead link (its errors no longer matter)."""
        if self.lost_at_s is None:
            self.lost_at_s, self._cause = self._clock(), exc
        self._last_error = exc
        log.warning("coordinator_lost", client=sync.client_id, reason=str(exc))
        self._check_give_up(0.0)
        sync.connection.drop("reconnecting")

    def _reconnect(self, sync: SyncPoint, started_s: float, immediate: bool) -> bool:
        """Re-join with backoff; False once this sync point's budget is spent.

        The first attempt of a sync point is made at once (`immediate`): the
        training steps since the last one were the pause.
        """
        assert self.lost_at_s is not None
        since_s = max(started_s, self.lost_at_s)  # this sync point's retrying
        while True:
            if not immediate and not self._pause(sync, since_s):
                return False
            immediate = False
            try:
                federation = sync.connection.rejoin(sync.federation)
            except (CoordinatorUnavailableError, ShuttingDownError) as exc:
                self._last_error = exc
                continue
            sync.rejoined(federation)
            log.info(
                "client_rejoined",
                client=sync.client_id,
                version=federation.model_version,
            )
            return True

    def _pause(self, sync: SyncPoint, since_s: float) -> bool:
        """Sleep the next backoff delay, unless it would end past the budget.

        Returns False when it would pass this sync point's `reconnect_max_s`;
        raises (`_check_give_up`) when it would pass `reconnect_give_up_s`.
        """
        delay = self.backoff.next_delay()
        self._check_give_up(delay)
        reason = str(self._last_error)
        if self._clock() + delay - since_s > self._config.reconnect_max_s:
            log.warning(
                "coordinator_unreachable",
                client=sync.client_id,
                reason=reason,
                retry="next sync point",
            )
            return False
        log.info(
            "reconnect_retry",
            client=sync.client_id,
            delay=round(delay, 3),
            reason=reason,
        )
        self._sleep(delay)
        return True

    def _check_give_up(self, delay_s: float) -> None:
        """Raise if the next attempt would come after `reconnect_give_up_s`."""
        assert self.lost_at_s is not None
        away_s = self._clock() - self.lost_at_s
        if away_s + delay_s < self._config.reconnect_give_up_s:
            return
        cause, last = self._cause, self._last_error
        shutdown = isinstance(cause, ShuttingDownError)
        raise (ShuttingDownError if shutdown else CoordinatorUnavailableError)(
            f"the coordinator at {self._target} has been away for {away_s:.1f} s "
            f"(ClientConfig.reconnect_give_up_s={self._config.reconnect_give_up_s:g})"
            f"; lost with: {cause}; last error: {last}"
        ) from last
