"""A Hugging Face `transformers.Trainer` callback that federates the training run.

    trainer = Trainer(model=model, args=args, train_dataset=train)
    trainer.add_callback(FedGrpcCallback("coord:7070"))
    trainer.train()

The callback joins when training begins (the Trainer's model exists and its
optimizer holds references to the parameters, which the client overwrites in
place), calls `DiLoCoClient.step()` after every optimizer step (`on_step_end`,
once per step whatever the gradient accumulation) and leaves when training
ends. Once the federation's run is over (`max_rounds`) it stops the Trainer.

What each step reports: callbacks receive neither the loss nor the batch, so
a forward hook on the model reads them from each training forward pass: the
batch size (first dimension of the first tensor input, e.g. `input_ids`) and
the output's `loss` (present when the batch has `labels`; a custom
`compute_loss` that computes it outside the model reports None). With
gradient accumulation, a step reports the sum of its micro-batches' samples
and their mean loss, as a plain loop would (token-weighted when the Trainer
passes `num_items_in_batch`, as it does for causal LMs).

Needs `pip install 'fedgrpc[hf]'` (transformers). One process only: under
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
    from transformers import (
        TrainerCallback,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "fedgrpc.integrations.hf needs transformers: pip install 'fedgrpc[hf]'"
    ) from exc

__all__ = ("FedGrpcCallback",)


class FedGrpcCallback(TrainerCallback):
    """Federate a stock `transformers.Trainer` through a fedgrpc coordinator.

    The arguments are `DiLoCoClient`'s (`evaluate(model, version)` runs on
    the global weights after every round, for validation metrics). `client`
    exposes the running client (rounds completed, bytes sent, last outcome,
    `eval_history`, `global_state_dict()`) once training has begun.
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
        """Check the arguments; the client joins when training begins.

        Raises:
            ConfigError: `target` is not a "host:port" string.
        """
        self._session = TrainerSession(
            target, inner_steps, compression, config, evaluate
        )
        self._hook: torch.utils.hooks.RemovableHandle | None = None

    @property
    def client(self) -> DiLoCoClient:
        """The running `DiLoCoClient` (RuntimeError before training begins)."""
        return self._session.client

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """Join and load the global weights into the Trainer's model, in place.

        Raises:
            ConfigError: several processes (DDP), or no trainable model.
        """
        if args.world_size > 1:
            raise ConfigError(
                f"FedGrpcCallback runs in one process, but this Trainer has "
                f"world_size={args.world_size}: under torch.distributed use "
                "fedgrpc.DistributedDiLoCoClient in a training loop instead"
            )
        joined = self._session.join(model, "transformers.Trainer")
        self._remove_hook()
        self._hook = joined.register_forward_hook(self._record, with_kwargs=True)

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """After each optimizer step: count it; every H-th runs a round."""
        if self._session.optimizer_step():
            control.should_training_stop = True  # the federation's run ended

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Leave the federation; `client` stays readable."""
        self.close()

    def close(self) -> None:
        """Leave the federation now (idempotent); `client` stays readable.

        Training that ends normally leaves by itself (`on_train_end`), but
        the Trainer has no callback for a `train()` that raised: call this
        then (or `with`-style in a `try/finally`), else the client keeps
        heartbeating until it is garbage-collected and every round waits
        `round_timeout_s` for it.
        """
        self._remove_hook()
        self._session.close()

    def _record(
        self,
        module: torch.nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
    ) -> None:
        """Forward hook: one training micro-batch's loss and size.

        Evaluation forwards (eval mode or no grad) are not training steps.
        """
        if not (module.training and torch.is_grad_enabled()):
            return
        loss = output.get("loss") if isinstance(output, Mapping) else None
        if loss is None:
            loss = getattr(output, "loss", None)
        # With num_items_in_batch the model divides by the whole step's token
        # count: each micro-batch's loss is its part of the step's.
        part = kwargs.get("num_items_in_batch") is not None
        self._session.micro_batch(
            loss, _batch_size((*kwargs.values(), *args)), part=part
        )

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def _batch_size(inputs: tuple[Any, ...]) -> int:
    """First dimension of the first tensor input (0 if there is none)."""
    for value in inputs:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 0
