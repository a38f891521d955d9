"""Evaluate the global model each time a new version arrives.

Right after a sync point loads a new version, the model holds the global
weights (plus whatever the client keeps local): the one moment a user can
measure the *federated* model without copying it. `GlobalEvaluation` runs
the user's function there, in eval mode and without gradients, restores the
training mode, logs the result, and keeps a history, so a loop can report
validation accuracy of the federation per round in one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from fedgrpc.log import get_logger

log = get_logger(__name__)

EvalResult = Mapping[str, float] | float | None
EvaluateFn = Callable[[torch.nn.Module, int], EvalResult]
"""(model holding the global weights, model version) -> metrics.

A float is recorded as {"metric": value}; a mapping as is; None records
nothing (the function logged on its own)."""


@dataclass(frozen=True, slots=True)
class GlobalEval:
    """One evaluation of a global model version."""

    model_version: int
    metrics: dict[str, float]


class GlobalEvaluation:
    """Runs `evaluate` once per new global version; keeps what it returned."""

    def __init__(self, model: torch.nn.Module, evaluate: EvaluateFn) -> None:
        self._model = model
        self._evaluate = evaluate
        self._last_version: int | None = None
        self.history: list[GlobalEval] = []
        """Every evaluation, oldest first."""

    def maybe_run(
        self,
        version: int,
        holding: Callable[[], AbstractContextManager[None]] | None = None,
    ) -> GlobalEval | None:
        """Evaluate `version` unless it was already; return the record.

        `holding`: a context in which the model holds the global weights,
        when it does not by itself (streaming rounds).
        """
        if version == self._last_version:
            return None
        self._last_version = version
        model = self._model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), holding() if holding else nullcontext():
                result = self._evaluate(model, version)
        finally:
            model.train(was_training)
        if result is None:
            return None
        record = GlobalEval(version, _metrics(result))
        self.history.append(record)
        log.info(
            "global_model_evaluated", model_version=version, metrics=record.metrics
        )
        return record


LOSS_NAMES = ("val_loss", "loss", "eval_loss")
"""Metric names `latest_loss` reports to the coordinator, first found wins."""


def latest_loss(history: list[GlobalEval]) -> tuple[int, float] | None:
    """(version, loss) of the newest evaluation that named a loss, else None.

    Only a metric called val_loss, loss or eval_loss: a bare float may be an
    accuracy, which a loss curve must not show.
    """
    if not history:
        return None
    record = history[-1]
    for name in LOSS_NAMES:
        if name in record.metrics:
            return record.model_version, record.metrics[name]
    return None


def _metrics(result: Mapping[str, float] | float) -> dict[str, float]:
    """The result as named finite-or-null floats (logs stay strict JSON)."""
    raw = {"metric": result} if isinstance(result, int | float) else dict(result)
    out = {}
    for name, value in raw.items():
        number = float(value)
        if not math.isfinite(number):
            log.warning("global_eval_not_finite", metric=name, value=str(number))
            continue
        out[str(name)] = number
    return out
