"""A version leaves only once it is durable; a failed checkpoint write pauses the run.

`CheckpointStore` writes the checkpoint after each applied round and keeps
a version that failed to write out of PullModel (`is_durable`). This module
decides what the coordinator does meanwhile, because serving on would break
the README's promise: after a restart from the previous checkpoint the same
version number would be issued again for other weights.

While a write fails (a full disk, a read-only remount) the coordinator is
NOT_SERVING:

* gRPC health, `fedgrpc status`, the `fedgrpc_serving` metric and the
  `coordinator_not_serving` log line say so, with the OS's reason;
* no round is applied (the open round keeps collecting: an update pushed
  meanwhile waits in it, or is refused as based on an old version as at
  any time; nothing is thrown away);
* the RoundClosed announcement of the unsaved version is held back and
  PullModel waits, so clients wait for the version as for a slow round;
* the write is retried, 1 s after the failure and then twice as long each
  time up to `checkpoint_retry_max_s`.

The first retry that succeeds makes the version durable: health goes back
to SERVING, the held announcements go out, waiting pulls are served and
rounds are applied again. A crash before that resumes from the previous
checkpoint; the lost version was never served, so its number may be reused
without two sets of weights ever having been seen under it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from fedgrpc.coordinator.ops.checkpoint_store import CheckpointStore
from fedgrpc.coordinator.ops.metrics import CoordinatorMetrics
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.records import Run
from fedgrpc.coordinator.rounds.registry import ClientRegistry
from fedgrpc.log import get_logger

log = get_logger(__name__)
RETRY_FIRST_S = 1.0
"""Seconds from a failed write to its first retry (capped by checkpoint_retry_max_s)."""

Announcement = Callable[[], Awaitable[None]]
"""What tells clients of a new version (RoundClosed, waking pulls)."""
ServingListener = Callable[[bool], Awaitable[None]]
"""Told True / False whenever the coordinator starts / stops serving (health)."""


class DurableGate:
    """Saves checkpoints for the runtime and holds announcements of unsaved versions.

    Event-loop side only. Given what a checkpoint holds (engine, clients,
    run) and the runtime's numeric lock, which every write holds so that no
    round steps the weights while they are on their way to disk.
    """

    def __init__(
        self,
        store: CheckpointStore,
        engine: RoundEngine,
        clients: ClientRegistry,
        run: Run,
        numeric_lock: asyncio.Lock,
        metrics: CoordinatorMetrics,
        retry_max_s: float,
    ) -> None:
        self._store = store
        self._engine = engine
        self._clients = clients
        self._run = run
        self._lock = numeric_lock
        self._metrics = metrics
        self._retry_max_s = retry_max_s
        self._reason = ""
        self._held: list[Announcement] = []
        self._listeners: list[ServingListener] = []
        self._retrying: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    @property
    def serving(self) -> bool:
        """False from a failed checkpoint write until a retry succeeds."""
        return not self._reason

    @property
    def not_serving_reason(self) -> str:
        """Why the coordinator is not serving ("" while it is), for people."""
        return self._reason

    def watch(self, listener: ServingListener) -> None:
        """Call `listener(serving)` at every change (the health service)."""
        self._listeners.append(listener)

    async def save(self) -> bool:
        """Checkpoint now; the caller holds the numeric lock. True if on disk.

        A failure stops serving (once) and starts the retries.
        """
        saved = await self._store.save(self._engine, self._clients, self._run)
        if not saved and self.serving and not self._run.stopping:
            await self._stop_serving()
        return saved

    async def announce(self, announcement: Announcement) -> None:
        """Run `announcement` now, or once the unsaved version is on disk."""
        if self.serving:
            await announcement()
        else:
            self._held.append(announcement)

    async def close(self) -> None:
        """Stop retrying (at shutdown: the final save is the last attempt).

        Not by cancelling: a write cancelled mid-way would release the lock
        while its thread still writes. A retry in progress finishes first.
        """
        self._held.clear()
        self._closing.set()
        if self._retrying is not None:
            await self._retrying

    async def _stop_serving(self) -> None:
        version = self._engine.model.version
        self._reason = (
            f"{self._store.last_error}; model version {version} is not on disk, so "
            "it is not served and no round is applied until a retry succeeds "
            "(free space where checkpoint_dir is)"
        )
        self._metrics.serving_changed(False)
        log.error("coordinator_not_serving", version=version, reason=self._reason)
        await self._tell(serving=False)
        self._retrying = asyncio.get_running_loop().create_task(
            self._retry_until_saved(), name="fedgrpc-checkpoint-retry"
        )

    async def _retry_until_saved(self) -> None:
        """Retry with exponential backoff; then serve again and announce."""
        delay = min(RETRY_FIRST_S, self._retry_max_s)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
            async with self._lock:
                if self._run.stopping or self._closing.is_set():
                    return
                saved = await self._attempt()
            if saved:
                break
            delay = min(2 * delay, self._retry_max_s)
            log.warning(
                "checkpoint_retry_failed", next_retry_s=delay,
                reason=self._store.last_error,
            )  # fmt: skip
        self._reason = ""
        self._metrics.serving_changed(True)
        log.info("coordinator_serving_again", version=self._engine.model.version)
        await self._tell(serving=True)
        held, self._held = self._held, []
        for announcement in held:
            await announcement()

    async def _attempt(self) -> bool:
        """One retry; a bug must not end the retries and leave us paused for good."""
        try:
            return await self._store.save(self._engine, self._clients, self._run)
        except Exception:
            log.exception("checkpoint_retry_crashed")
            return False

    async def _tell(self, serving: bool) -> None:
        for listener in self._listeners:
            try:
                await listener(serving)
            except Exception:  # a broken listener must not stop the run
                log.exception("serving_listener_failed", serving=serving)
