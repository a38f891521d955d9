"""Who waits on the coordinator: PullModel for a durable version, and `wait_until`.

One condition is woken whenever what a waiter may be waiting for changed: a
round closed or a new model was announced, a session closed (`wait_finished`
counts who is left), or the coordinator stops. A pull waits until a model of
its version is published, no round is being applied, and the version's
checkpoint is durable (`CheckpointStore.is_durable`); then it holds the model
while it streams, and `pulls_active` tells the next apply to copy on write
rather than change the buffer under it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from fedgrpc.coordinator.ops.checkpoint_store import CheckpointStore
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.records import Phase, PublishedModel, Run


class Waiters:
    """The condition waiters sleep on, and the pulls reading the published model."""

    def __init__(
        self, engine: RoundEngine, run: Run, checkpoints: CheckpointStore
    ) -> None:
        """Pulls read `engine`'s model once `checkpoints` made it durable."""
        self._engine = engine
        self._run = run
        self._checkpoints = checkpoints
        self._changed = asyncio.Condition()
        self._active_pulls = 0

    @property
    def pulls_active(self) -> bool:
        """True while a pull may still be reading the published buffer."""
        return self._active_pulls > 0

    async def wake(self) -> None:
        """Let every waiter check its condition again."""
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds; woken by `wake`."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    @contextlib.asynccontextmanager
    async def pull(self, min_version: int) -> AsyncIterator[PublishedModel]:
        """Wait for a model of at least `min_version`; hold it while it streams.

        Raises:
            ShuttingDownError: the coordinator stopped while the pull waited.
        """
        engine = self._engine

        def ready() -> bool:
            published = engine.model.published
            return self._run.stopping or (
                published is not None
                and published.version >= min_version
                and engine.phase is not Phase.APPLYING
                and self._checkpoints.is_durable(published.version)
            )

        await self.wait_until(ready)
        self._run.check_running()
        published = engine.model.published
        assert published is not None
        self._active_pulls += 1
        try:
            yield published
        finally:
            self._active_pulls -= 1
