"""The workloads `fedgrpc simulate` can federate, behind one small interface.

A `Task` is everything task-specific a simulated client needs: the model,
its inner optimizer, how the training data splits across clients (a
`fedgrpc.data.Partition`), a batch sampler per client, one training step
and the validation metrics. The worker (`fedgrpc.sim.worker`) runs the
same loop for every task: sample, `train_step`, `DiLoCoClient.step`, and
`evaluate` on the global weights after each round.

* `charlm` (`tasks.charlm`): the byte-level transformer on the standard
  library's sources (the default; validation loss in nats).
* `digits` (`tasks.digits`): a small CNN with BatchNorm on scikit-learn's
  bundled 8x8 digits (validation loss and accuracy).

Every process builds its task from the same `TaskSettings`, so the model,
the data and the partition agree everywhere without a message.
"""

from __future__ import annotations

from fedgrpc.sim.tasks.base import (
    TASKS,
    Batch,
    Sampler,
    Task,
    TaskName,
    TaskSettings,
)

__all__ = ["TASKS", "Batch", "Sampler", "Task", "TaskName", "TaskSettings", "load_task"]


def load_task(settings: TaskSettings) -> Task:
    """The task `settings` names, its data loaded (imports only what it needs).

    Raises:
        ConfigError: the task's data or optional dependency is missing
            (digits without scikit-learn names `pip install 'fedgrpc[digits]'`).
    """
    if settings.name == "digits":
        from fedgrpc.sim.tasks.digits import DigitsTask

        return DigitsTask()
    from fedgrpc.sim.tasks.charlm import CharLMTask

    return CharLMTask(settings)
