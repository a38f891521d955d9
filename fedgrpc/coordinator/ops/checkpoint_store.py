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

A write that fails (disk full) leaves the version unsaved: it stays not
durable, so it is never served, until a later write succeeds
(`ops.durable_gate` pauses rounds and retries meanwhile).
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
        self._unsaved: int | None = None
        """The oldest model version whose checkpoint is being written or
        failed to write (None: every version so far is on disk)."""
        self._saved_version: int | None = None
        """The model version of the newest checkpoint on disk (None: none)."""
        self.last_error: str = ""
        """Why the last write failed ("" after a success), without file paths:
        it is shown in status and refusals."""
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
        self._saved_version = engine.model.version
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
        """False while `version`'s checkpoint is being written or failed to write.

        PullModel serves a version only when this is true: a version that is
        not on disk could be issued again, with other weights, after a restart.
        """
        return self._unsaved is None or version < self._unsaved

    async def save(
        self, engine: RoundEngine, clients: ClientRegistry, run: Run
    ) -> bool:
        """Checkpoint the run now; True once it is on disk (or none is kept).

        The caller holds the runtime's numeric lock. A failed write (disk
        full) is logged and counted and returns False: the previous
        checkpoints stay intact and the version stays not durable until a
        later write succeeds.
        """
        if self._dir is None or engine.model.master is None:
            return True
        totals = Totals(run.run_id, run.bytes_received, run.bytes_sent)
        snapshot = capture(engine, clients, totals)
        version = engine.model.version
        if self._unsaved is None and version != self._saved_version:
            self._unsaved = version  # a rewrite of a saved version leaves it served
        started = time.monotonic()
        try:
            path = await asyncio.to_thread(
                self._dir.write, snapshot.round_id, snapshot.state, snapshot.tensors
            )
        except (CheckpointError, OSError) as exc:
            self.last_error = _reason(exc)
            self._metrics.checkpoint_failed()
            log.error(
                "checkpoint_failed", round=snapshot.round_id, version=version,
                error=str(exc),
            )  # fmt: skip
            return False
        self._unsaved, self._saved_version, self.last_error = None, version, ""
        seconds = time.monotonic() - started
        self.last_path = path
        self._metrics.checkpoint_written(seconds)
        log.info(
            "checkpoint_written", round=snapshot.round_id, version=version,
            path=str(path), seconds=round(seconds, 3),
        )  # fmt: skip
        return True

    def close(self) -> None:
        """Release the checkpoint directory (at shutdown)."""
        if self._dir is not None:
            self._dir.close()


def _reason(exc: BaseException) -> str:
    """The OS's reason for a failed write ("No space left on device"), no path."""
    while exc.__cause__ is not None and not isinstance(exc, OSError):
        exc = exc.__cause__
    if isinstance(exc, OSError) and exc.strerror:
        return f"checkpoint write failed: {exc.strerror} (errno {exc.errno})"
    return "checkpoint write failed (see the coordinator log)"
