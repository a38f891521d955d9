"""Fault hooks: the points where tests break a real coordinator on purpose.

Crash recovery and exactly-once delivery can only be tested by failing at the
exact moment that matters (between a checkpoint's write and its rename,
between an update's commit and its acknowledgement). Each such moment calls
one method of the `FaultHooks` the coordinator was built with. Production
builds it with `NO_FAULTS`, whose methods do nothing; a test passes a subclass
(tests/helpers/faults.py) to `start_coordinator`, `serve`, `serve_in_thread`
or `CoordinatorRuntime`, and nothing is read from the environment.
"""

from __future__ import annotations

from typing import Literal

CheckpointStage = Literal["before_replace", "after_replace"]
"""before_replace: the new checkpoint is synced under its temporary name;
after_replace: it has been renamed into place (the directory not yet pruned)."""


class FaultHooks:
    """No-op hooks; override a method to fail at that point.

    A hook may raise (the error takes the path an error raised there would)
    or end the process (a power cut). Hooks run on the event loop, except
    `checkpoint_write`, which runs on the checkpoint writer's worker thread.
    """

    def update_committed(self, client_id: str, round_id: int) -> None:
        """An update was committed; its acknowledgement is about to be sent."""

    def checkpoint_write(self, stage: CheckpointStage, round_id: int) -> None:
        """A checkpoint of round `round_id` reached `stage`."""


NO_FAULTS = FaultHooks()
"""The hooks every production coordinator runs with."""
