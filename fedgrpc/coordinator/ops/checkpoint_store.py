"""Checkpoints in the running coordinator: resume at start, save after each round.

The exactly-once rule: a model version leaves the coordinator (PullModel,
RoundClosed) only once the checkpoint holding it is on disk. The runtime
saves right after a round is applied, still holding its numeric lock, and
PullModel waits while `is_durable(version)` is false. So a crash

* before the rename: the restarted coordinator resumes at the previous
  version. Nobody ever saw the lost one, and the clients' updates for that
  round are simply pushed again (their base version still matches).
* after the rename: it resumes at the new version. The round is not applied
  again: an update for it was computed from the old version and is refused
  (wrong base version).

Either way every version number names one set of weights, and the momentum
holds each applied round exactly once. The price is one checkpoint write
(~1-2 s per GB) between a round's outer step and its announcement.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.faults import NO_FAULTS, FaultHooks
from fedgrpc.coordinator.ops.checkpoint_content import Totals, capture, restore
from fedgrpc.coordinator.ops.checkpoint_file import CheckpointDir, CheckpointFile
from fedgrpc.coordinator.ops.metrics import CoordinatorMetrics
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.records import Run
from fedgrpc.coordinator.rounds.registry import ClientRegistry
from fedgrpc.errors import CheckpointError
from fedgrpc.log import get_logger

log = get_logger(__name__)


class CheckpointStore:
    """The runtime's checkpoints; does nothing when `checkpoint_dir` is "".

    Event-loop side only; the file I/O runs on a worker thread. It is given
    what a checkpoint holds (the engine, the clients, the run), not the runtime.
    """

    def __init__(
        self,
        config: CoordinatorConfig,
        metrics: CoordinatorMetrics,
        faults: FaultHooks = NO_FAULTS,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._dir: CheckpointDir | None = None
        self._resume: CheckpointFile | None = None
        self._writing: int | None = None
        """Model version whose checkpoint is being written (None: none)."""
        self.last_path: Path | None = None
        """The newest checkpoint written or resumed from."""
        if config.checkpoint_dir:
            self._dir = CheckpointDir(
                config.checkpoint_dir, config.checkpoint_keep, faults
            )
            self._resume = self._dir.load_newest()

    @property
    def resumed_run_id(self) -> str | None:
        """The run id to continue, if a checkpoint is about to be restored."""
        return None if self._resume is None else str(self._resume.state["run_id"])

    def restore(self, engine: RoundEngine, clients: ClientRegistry, run: Run) -> None:
        """Load the newest valid checkpoint into a just-built engine, if any."""
        checkpoint, self._resume = self._resume, None
        if checkpoint is None:
            return
        totals = restore(checkpoint, engine, clients)
        run.bytes_received = totals.bytes_received
        run.bytes_sent = totals.bytes_sent
        self.last_path = checkpoint.path
        log.info(
            "coordinator_resumed",
            path=str(checkpoint.path),
            run_id=totals.run_id,
            round=checkpoint.round_id,
            version=engine.model.version,
            clients=len(clients.all()),
        )
        if not self._config.identity_key:
            log.warning(
                "coordinator_identity_changed",
                hint="set identity_key: clients that pinned the previous (throwaway) "
                "coordinator key will refuse this one",
            )

    def is_durable(self, version: int) -> bool:
        """False while `version`'s checkpoint is being written (never served then)."""
        return self._writing is None or version < self._writing

    async def save(
        self, engine: RoundEngine, clients: ClientRegistry, run: Run
    ) -> None:
        """Checkpoint the run now. The caller holds the runtime's numeric lock.

        A failed write (disk full) is logged and counted, and the coordinator
        carries on: the previous checkpoints stay intact, only the guarantee
        for rounds since then is weaker until a write succeeds again.
        """
        if self._dir is None or engine.model.master is None:
            return
        totals = Totals(run.run_id, run.bytes_received, run.bytes_sent)
        snapshot = capture(engine, clients, totals)
        version = engine.model.version
        self._writing, started = version, time.monotonic()
        try:
            path = await asyncio.to_thread(
                self._dir.write, snapshot.round_id, snapshot.state, snapshot.tensors
            )
        except (CheckpointError, OSError) as exc:
            self._metrics.checkpoint_failed()
            log.error("checkpoint_failed", round=snapshot.round_id, error=str(exc))
            return
        finally:
            self._writing = None
        seconds = time.monotonic() - started
        self.last_path = path
        self._metrics.checkpoint_written(seconds)
        log.info(
            "checkpoint_written", round=snapshot.round_id, version=version,
            path=str(path), seconds=round(seconds, 3),
        )  # fmt: skip

    def close(self) -> None:
        """Release the checkpoint directory (at shutdown)."""
        if self._dir is not None:
            self._dir.close()
