"""The outer-optimizer contract, its shared argument checks, and the builder.

Last step of the coordinator's data path (wire -> aggregate -> **optim** ->
wire): the round's mean pseudo-gradient in, new global weights out. Clients
send pseudo-gradients Δ = θ_global - θ_local, so Δ points the way a gradient
does (uphill): a client whose local training lowered a weight sends Δ > 0,
and the outer step must lower that weight too. The optimizers here therefore
*subtract* Δ, exactly as SGD subtracts a gradient.

DiLoCo (Douillard et al. 2023, arXiv 2311.08105, Algorithm 1) uses SGD with
Nesterov momentum (lr 0.7, momentum 0.9) as the outer optimizer; FedAvg
(McMahan et al. 2017) is the special case "lr 1, no momentum", which lands on
the mean of the local models. FedAvgM (Hsu et al. 2019) is heavy-ball
momentum on the same step. The algorithms live by family: `momentum`
(Nesterov, FedAvg, FedAvgM: SGD) and `adaptive` (FedAdagrad, FedAdam,
FedYogi: Reddi et al. 2021, per-coordinate step sizes).

Memory is the constraint: the coordinator holds the global weights, the
aggregate and the optimizer state, each one float32 vector of the whole model.
Every step works in place so that no further model-sized buffer appears.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from fedgrpc.errors import ConfigError, InvalidUpdateError

StateDict = dict[str, torch.Tensor | float | int]
"""What `OuterOptimizer.state_dict` returns: flat, so a checkpoint can store it."""


class OuterOptimizer(Protocol):
    """Applies one outer step per round to the flat global weights.

    Implementations are not thread-safe; the coordinator calls them from one
    task at a time, once per round.
    """

    @property
    def name(self) -> str:
        """Config name of the algorithm (`nesterov`, `fedadam`, ...), for logs.

        A checkpoint records it; resuming under another name is refused.
        """
        ...

    def step(self, params: torch.Tensor, pseudo_gradient: torch.Tensor) -> None:
        """Update `params` in place from the round's mean pseudo-gradient.

        Args:
            params: global weights, 1-D float32, updated in place.
            pseudo_gradient: mean of θ_global - θ_local over the round's
                clients, 1-D float32, same length and device as `params`. The
                optimizer MAY overwrite it (it is used as scratch space), which
                spares the coordinator one model-sized buffer; callers that
                still need it must pass a copy.

        Raises:
            InvalidUpdateError: shape, dtype or device mismatch, or NaN/Inf in
                `pseudo_gradient`. `params` and the state are then unchanged.
        """
        ...

    def state_dict(self) -> StateDict:
        """The state a checkpoint needs to resume bit-identically.

        Hyperparameters are not included: they come from the coordinator's
        config, so a resumed run may change them deliberately.
        """
        ...

    def load_state_dict(self, state: StateDict) -> None:
        """Restore what `state_dict` returned (tensors are copied, not aliased).

        Raises:
            InvalidUpdateError: the state is malformed.
        """
        ...


def check_step_args(params: torch.Tensor, pseudo_gradient: torch.Tensor) -> None:
    """Reject bad arguments before anything is written (validate, then commit)."""
    for label, tensor in (("params", params), ("pseudo_gradient", pseudo_gradient)):
        if tensor.dim() != 1 or tensor.dtype != torch.float32:
            raise InvalidUpdateError(
                f"{label} must be a 1-D float32 tensor, got shape "
                f"{tuple(tensor.shape)} dtype {tensor.dtype}; flatten the model "
                "with fedgrpc.wire.tensors first"
            )
    if params.numel() != pseudo_gradient.numel():
        raise InvalidUpdateError(
            f"pseudo_gradient has {pseudo_gradient.numel()} coordinates but params "
            f"has {params.numel()}; both must describe the same model"
        )
    if params.device != pseudo_gradient.device:
        raise InvalidUpdateError(
            f"params are on {params.device} but pseudo_gradient is on "
            f"{pseudo_gradient.device}; move both to one device"
        )
    # One reduction instead of isfinite(g).all(), which would allocate a
    # d-byte mask: NaN and ±Inf always make the sum non-finite. A finite vector
    # only fails if its sum overflows float32 (|sum| > 3.4e38), which no sane
    # pseudo-gradient does. Applying NaN would poison the model for good.
    if not math.isfinite(float(pseudo_gradient.sum())):
        raise InvalidUpdateError(
            "pseudo_gradient contains NaN or Inf (or overflows float32); "
            "refusing to apply it to the global model"
        )


def check_lr(lr: float) -> None:
    """Refuse a learning rate that is not a finite number > 0."""
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"outer lr must be a finite number > 0, got {lr}")


def check_unit_interval(value: float, what: str) -> None:
    """Refuse a decay rate (momentum, β1, β2) outside [0, 1)."""
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ConfigError(f"outer {what} must be in [0, 1), got {value}")


def load_steps(state: StateDict) -> int:
    """The `steps` counter of a state dict, checked before anything is restored."""
    steps = state.get("steps")
    if not isinstance(steps, int) or steps < 0:
        raise InvalidUpdateError(f"state 'steps' must be an int >= 0, got {steps!r}")
    return steps


def load_buffer(state: StateDict, key: str) -> torch.Tensor | None:
    """A copy (float32) of the 1-D buffer `key`, or None if the state has none.

    Copied: later steps write into the buffer, never into a checkpoint dict.
    """
    buf = state.get(key)
    if buf is None:
        return None
    if not (isinstance(buf, torch.Tensor) and buf.dim() == 1):
        raise InvalidUpdateError(f"state {key!r} must be a 1-D tensor")
    return buf.detach().to(torch.float32, copy=True)


def check_buffer_fits(
    buf: torch.Tensor | None, params: torch.Tensor, what: str
) -> None:
    """Refuse state loaded for another model before a step writes anything."""
    if buf is not None and buf.numel() != params.numel():
        raise InvalidUpdateError(
            f"the {what} holds {buf.numel()} coordinates but params "
            f"have {params.numel()}; was the state loaded from another model?"
        )
