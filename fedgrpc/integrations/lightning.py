"""A Lightning callback that federates a `lightning.pytorch.Trainer`'s `fit`.

    trainer = L.Trainer(max_steps=1000, callbacks=[FedGrpcCallback("coord:7070")])
    trainer.fit(module, loader)

The callback joins when training starts (`on_train_start`: the module is on
its device and its optimizers exist, holding references to the parameters
the client overwrites in place), calls `DiLoCoClient.step()` once per
*optimizer* step and leaves when training ends or fails. Lightning calls
`on_train_batch_end` per batch; with `accumulate_grad_batches=k` only every
k-th batch steps the optimizer, which `trainer.global_step` (optimizer steps
taken) tells, so the k batches make one step: their samples summed, their
losses (`outputs["loss"]`, which Lightning has divided by k) summed back to
the step's mean. Batch sizes come from Lightning's own `extract_batch_size`
(the first tensor's first dimension, through lists and dicts). Once the
federation's run is over (`max_rounds`) it stops the Trainer.

Needs `pip install 'fedgrpc[lightning]'`. One process only: under
torch.distributed use `DistributedDiLoCoClient` in a loop instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fedgrpc.client import DiLoCoClient
from fedgrpc.client.evaluation import EvaluateFn
from fedgrpc.compress import CodecConfig
from fedgrpc.config import ClientConfig
from fedgrpc.errors import ConfigError
from fedgrpc.integrations.session import TrainerSession

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.data import extract_batch_size
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "fedgrpc.integrations.lightning needs lightning: "
        "pip install 'fedgrpc[lightning]'"
    ) from exc

__all__ = ("FedGrpcCallback",)


class FedGrpcCallback(pl.Callback):
    """Federate a `lightning.pytorch.Trainer` through a fedgrpc coordinator.

    The arguments are `DiLoCoClient`'s (`evaluate(model, version)` runs on
    the global weights after every round, for validation metrics). `client`
    exposes the running client (rounds completed, bytes sent, last outcome,
    `eval_history`, `global_state_dict()`) once training has started.
    """

    def __init__(
        self,
        target: str,
        inner_steps: int | None = None,
        *,
        compression: CodecConfig | None = None,
        config: ClientConfig | None = None,
        evaluate: EvaluateFn | None = None,
    ) -> None:
        """Check the arguments; the client joins when training starts.

        Raises:
            ConfigError: `target` is not a "host:port" string.
        """
        self._session = TrainerSession(
            target, inner_steps, compression, config, evaluate
        )
        self._optimizer_steps = 0

    @property
    def client(self) -> DiLoCoClient:
        """The running `DiLoCoClient` (RuntimeError before training starts)."""
        return self._session.client

    def on_train_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        """Join and load the global weights into the module, in place.

        Raises:
            ConfigError: several processes (DDP), or no trainable module.
        """
        if trainer.world_size > 1:
            raise ConfigError(
                f"FedGrpcCallback runs in one process, but this Trainer has "
                f"world_size={trainer.world_size}: under torch.distributed use "
                "fedgrpc.DistributedDiLoCoClient in a training loop instead"
            )
        self._session.join(pl_module, "lightning.pytorch.Trainer")
        self._optimizer_steps = trainer.global_step

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Count the batch; if it stepped the optimizer, one client step."""
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            loss = None
        # Automatic optimization divides the loss by accumulate_grad_batches.
        part = pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1
        self._session.micro_batch(loss, extract_batch_size(batch), part=part)
        if trainer.global_step == self._optimizer_steps:
            return  # still accumulating gradients
        self._optimizer_steps = trainer.global_step
        if self._session.optimizer_step():
            trainer.should_stop = True  # the federation's run ended

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Leave the federation; `client` stays readable."""
        self.close()

    def close(self) -> None:
        """Leave the federation now (idempotent); training's end does it too."""
        self._session.close()

    def on_exception(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        exception: BaseException,
    ) -> None:
        """Leave at once if training fails, so no round waits for this client."""
        self._session.close()
