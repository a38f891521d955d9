"""What both trainer callbacks share: a `DiLoCoClient` driven by trainer hooks.

A trainer calls its callbacks once per micro-batch (forward and backward) and
once per optimizer step; with gradient accumulation there are several
micro-batches per step. `DiLoCoClient.step()` counts *optimizer* steps (H of
them make a round), so the session folds the micro-batches of one step into
one call: the step's samples are their sum, its loss their mean, which is what
a plain loop with the same accumulation would report. Trainers that already
scale each micro-batch's loss to its share of the step's (Lightning divides by
the accumulation; a Trainer passing `num_items_in_batch` divides by the
step's token count) report *parts*, whose sum is the step's loss.

The client's contract holds because trainers keep it already: every hook runs
on the training thread, the optimizer step is over when `optimizer_step()`
runs, and the client overwrites the model's parameters in place (join and
every round), so the trainer's optimizer keeps its references.
"""

from __future__ import annotations

import torch

from fedgrpc.client import DiLoCoClient
from fedgrpc.client.evaluation import EvaluateFn
from fedgrpc.compress import CodecConfig
from fedgrpc.config import ClientConfig
from fedgrpc.errors import ConfigError
from fedgrpc.log import get_logger

log = get_logger(__name__)


class TrainerSession:
    """One `DiLoCoClient` across a trainer's `fit`/`train` call.

    Not thread-safe: the trainer's hooks all run on its training thread.
    """

    def __init__(
        self,
        target: str,
        inner_steps: int | None,
        compression: CodecConfig | None,
        config: ClientConfig | None,
        evaluate: EvaluateFn | None,
    ) -> None:
        """Check the arguments now, in the user's line, not at train time.

        Raises:
            ConfigError: `target` is not a "host:port" string.
        """
        if not isinstance(target, str) or ":" not in target.strip(":"):
            raise ConfigError(
                f"target={target!r} is invalid: expected the coordinator's "
                '"host:port" as a string, e.g. "127.0.0.1:7070"'
            )
        self._target = target
        self._inner_steps = inner_steps
        self._compression = compression
        self._config = config
        self._evaluate = evaluate
        self._client: DiLoCoClient | None = None
        self._losses: list[torch.Tensor] = []
        self._samples = 0
        self._parts = False

    @property
    def client(self) -> DiLoCoClient:
        """The running client (status: rounds, bytes, outcome, version).

        Raises:
            RuntimeError: training has not started (the client joins when it does).
        """
        if self._client is None:
            raise RuntimeError(
                "the fedgrpc client joins when training starts; "
                "read .client inside or after training"
            )
        return self._client

    def join(self, model: object, trainer: str) -> torch.nn.Module:
        """Join with `model` (the trainer's, whose parameters are overwritten in place).

        A second `train()`/`fit()` with the same callback joins again as a
        new client (the previous one left when its training ended).

        Returns:
            `model`, checked to be a torch module.

        Raises:
            ConfigError: `model` is not a torch module, or it has no parameter
                that requires grad (nothing would ever change or travel).
            Whatever `DiLoCoClient` raises at join.
        """
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(
                f"{trainer} gave the fedgrpc callback a {type(model).__name__}, "
                "not a torch.nn.Module: nothing to federate"
            )
        if not any(param.requires_grad for param in model.parameters()):
            raise ConfigError(
                f"the {type(model).__name__} has no parameter that requires grad: "
                "training would never change it, so there is nothing to federate "
                "(unfreeze the parameters to train, e.g. the LoRA adapters)"
            )
        self.close()
        self._client = DiLoCoClient(
            self._target,
            model,
            self._inner_steps,
            compression=self._compression,
            config=self._config,
            evaluate=self._evaluate,
        )
        self._losses, self._samples = [], 0
        log.info("trainer_joined", trainer=trainer, client=self._client.client_id)
        return model

    def micro_batch(
        self, loss: torch.Tensor | float | None, samples: int, *, part: bool = False
    ) -> None:
        """Count one forward/backward of `samples` samples and its loss.

        `part`: the loss is already this micro-batch's share of the step's
        loss (the step's is their sum), rather than its own mean (the step's
        is their mean).
        """
        self._samples += samples
        self._parts = part
        if isinstance(loss, torch.Tensor):
            # Kept on its device: one .item() per optimizer step, not per batch.
            self._losses.append(loss.detach().float().mean())
        elif loss is not None:
            self._losses.append(torch.tensor(float(loss)))

    def optimizer_step(self) -> bool:
        """One `DiLoCoClient.step()` for the optimizer step that just ran.

        Returns:
            True once the federation's run has ended (`max_rounds`): the
            model holds the final global weights and training should stop.
        """
        client = self.client
        loss = None
        if self._losses:  # one host sync per optimizer step
            losses = torch.stack(self._losses)
            loss = float(losses.sum() if self._parts else losses.mean())
        samples = max(self._samples, 1)  # a loss-only step still weighs something
        self._losses, self._samples = [], 0
        client.step(loss, num_samples=samples)
        return client.finished

    def close(self) -> None:
        """Leave the federation (idempotent); `client` stays readable for status."""
        if self._client is not None:
            self._client.close()
