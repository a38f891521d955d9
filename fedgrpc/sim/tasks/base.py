"""What every simulated task provides (`Task`) and what builds one (`TaskSettings`).

The interface of `fedgrpc.sim.tasks`, apart from the tasks themselves so
they can import it without importing each other (see the package docstring).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import nn

from fedgrpc.data import Partition, PartitionSpec
from fedgrpc.errors import ConfigError
from fedgrpc.sim import DEFAULT_CORPUS_BYTES
from fedgrpc.sim.models import TrainDefaults

Batch = tuple[torch.Tensor, torch.Tensor]
Sampler = Callable[[torch.Generator], Batch]
"""One client's batch source: a fresh (inputs, targets) batch per call,
drawn only from the generator it is given (never the global RNG)."""
TaskName = Literal["charlm", "digits"]
TASKS: tuple[TaskName, ...] = ("charlm", "digits")


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSettings:
    """What builds a task (picklable: every client process gets a copy)."""

    name: TaskName | str = "charlm"
    """Which task; one of `TASKS`."""
    corpus_bytes: int = DEFAULT_CORPUS_BYTES
    """charlm: bytes of stdlib source to train on."""
    eval_batches: int = 8
    """charlm: validation batches per evaluation (digits scores its whole
    validation split, 360 images, in one forward pass)."""
    defaults: TrainDefaults = field(default_factory=TrainDefaults)
    """charlm: the model shape and inner AdamW settings."""

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise ConfigError(
                f"task {self.name!r} is unknown: expected one of {', '.join(TASKS)}"
            )


class Task(Protocol):
    """A simulated workload: the same model, data and metrics in every process."""

    @property
    def batch_size(self) -> int:
        """Samples per inner step (what `DiLoCoClient.step` is told)."""
        ...

    def build_model(self, seed: int) -> nn.Module:
        """Fresh weights that depend only on `seed` (bit-identical everywhere)."""
        ...

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The inner optimizer, kept for the whole run (DiLoCo does not reset it)."""
        ...

    def partition(self, num_clients: int, spec: PartitionSpec, seed: int) -> Partition:
        """The training data's split across clients (same arguments, same split)."""
        ...

    def sampler(self, partition: Partition, client: int) -> Sampler:
        """Client `client`'s batches, drawn from its part of `partition`."""
        ...

    def train_step(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch
    ) -> torch.Tensor:
        """One inner step on `batch`; returns the detached training loss."""
        ...

    def evaluate(self, model: nn.Module, seed: int) -> dict[str, float]:
        """Validation metrics (`val_loss`, and `val_accuracy` if the task has one).

        Scores the same held-out data every time, so rounds compare; puts
        the model in eval mode and restores its mode after.
        """
        ...
