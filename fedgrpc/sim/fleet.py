"""The simulated clients' processes: start them, restart the crashed, stop them.

One `spawn` process per client runs `fedgrpc.sim.worker.run_worker`. A
process that exits with `CRASH_EXIT_CODE` after reporting a crash
(`--crash-rate`) is started again with the same identity key, its restart
budget reduced and its crash draws resumed after the attempt it died at;
any other exit before `done` is a failure the launcher reports.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from fedgrpc.log import get_logger
from fedgrpc.sim.churn import CRASH_EXIT_CODE
from fedgrpc.sim.worker import Gates, WorkerArgs, run_worker

log = get_logger(__name__)


@dataclass
class Fleet:
    """Client processes by index, and how often each was restarted."""

    context: Any
    """The `spawn` multiprocessing context."""
    results: Any
    """The workers' result queue."""
    gates: Gates
    args: list[WorkerArgs]
    """Each client's first incarnation's arguments."""
    processes: list[Any] = field(default_factory=list)
    restarts: list[int] = field(default_factory=list)

    def start(self) -> None:
        """Start every client's first process."""
        self.restarts = [0] * len(self.args)
        self.processes = [self._spawn(args) for args in self.args]

    def _spawn(self, args: WorkerArgs) -> Any:
        process = self.context.Process(
            target=run_worker,
            args=(args, self.results, self.gates),
            name=f"fedgrpc-sim-{args.index}-{args.incarnation}",
        )
        process.start()
        return process

    def crashed(self, index: int) -> bool:
        """True if client `index`'s process exited as a simulated crash."""
        return bool(self.processes[index].exitcode == CRASH_EXIT_CODE)

    def restart(self, index: int, crash: dict[str, float]) -> None:
        """Start client `index` again after the crash it reported (`crash`).

        Same key (so the coordinator keeps its record), one restart fewer
        left, crash draws from the next attempt on, fresh batches.
        """
        self.processes[index].join(timeout=10)  # reap the dead one
        self.restarts[index] += 1
        first = self.args[index]
        args = dataclasses.replace(
            first,
            restarts_left=first.restarts_left - self.restarts[index],
            first_attempt=int(crash["attempt"]) + 1,
            incarnation=self.restarts[index],
        )
        log.info("client_restarted", client=index, restarts=self.restarts[index])
        self.processes[index] = self._spawn(args)

    def stop(self, grace_s: float) -> None:
        """Give released workers `grace_s` (in all) to leave and exit, then end them.

        After a failure `grace_s` is 0: whatever still runs is ended at once.
        """
        deadline = time.monotonic() + grace_s
        for worker in self.processes:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                worker.terminate()
            worker.join(timeout=10)
