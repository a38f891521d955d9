"""Outer optimizers: turn the round's mean pseudo-gradient into new global weights.

Last step of the coordinator's data path (wire -> aggregate -> **optim** ->
wire). Clients send pseudo-gradients Δ = θ_global - θ_local, so Δ points the
way a gradient does (uphill): a client whose local training lowered a weight
sends Δ > 0, and the outer step must lower that weight too. The optimizers here
therefore *subtract* Δ, exactly as SGD subtracts a gradient.

DiLoCo (Douillard et al. 2023, arXiv 2311.08105, Algorithm 1) uses SGD with
Nesterov momentum (lr 0.7, momentum 0.9) as the outer optimizer; FedAvg
(McMahan et al. 2017) is the special case "lr 1, no momentum", which lands on
the mean of the local models.

Memory is the constraint: the coordinator holds the global weights, the
aggregate and the optimizer state, each one float32 vector of the whole model.
Every step works in place so that no further model-sized buffer appears.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from fedgrpc.config import OuterOptimizerName
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
        """Config name of the algorithm (`nesterov`, `fedavg`), for logs and checks."""
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


def _check_step_args(params: torch.Tensor, pseudo_gradient: torch.Tensor) -> None:
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


def _check_lr(lr: float) -> None:
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"outer lr must be a finite number > 0, got {lr}")


class NesterovOuterOptimizer:
    """SGD with Nesterov momentum on flat weights: DiLoCo's outer optimizer.

    Matches `torch.optim.SGD([p], lr, momentum, nesterov=True)` (dampening 0,
    no weight decay) fed the pseudo-gradient as `p.grad`, op for op:

        b ← g                      first step (torch clones g)
        b ← momentum · b + g       later steps
        u ← g + momentum · b       Nesterov look-ahead
        θ ← θ - lr · u

    Memory: one lazily allocated float32 momentum buffer of the model's size;
    `u` is computed in the caller's pseudo-gradient buffer.
    """

    def __init__(self, lr: float = 0.7, momentum: float = 0.9) -> None:
        _check_lr(lr)
        # momentum 0 degenerates to plain SGD (u = g); the config allows it.
        if not (math.isfinite(momentum) and 0 <= momentum < 1):
            raise ConfigError(f"outer momentum must be in [0, 1), got {momentum}")
        self.lr = lr
        self.momentum = momentum
        self.steps = 0
        self._buf: torch.Tensor | None = None

    @property
    def name(self) -> str:
        """Always `nesterov`."""
        return "nesterov"

    def step(self, params: torch.Tensor, pseudo_gradient: torch.Tensor) -> None:
        """Apply one Nesterov step; overwrites `pseudo_gradient` with the update.

        See `OuterOptimizer.step` for the contract.
        """
        _check_step_args(params, pseudo_gradient)
        buf = self._buf
        if buf is not None and buf.numel() != params.numel():
            raise InvalidUpdateError(
                f"the momentum buffer holds {buf.numel()} coordinates but params "
                f"have {params.numel()}; was the state loaded from another model?"
            )
        if buf is not None and buf.device != params.device:
            # A checkpoint loaded on CPU meets CUDA params: move once, keep there.
            buf = self._buf = buf.to(params.device)
        g = pseudo_gradient
        if buf is None:
            buf = self._buf = g.clone()
        else:
            buf.mul_(self.momentum).add_(g)
        g.add_(buf, alpha=self.momentum)  # g now holds u, the Nesterov update
        params.add_(g, alpha=-self.lr)
        self.steps += 1

    def state_dict(self) -> StateDict:
        """`steps`, plus `momentum_buffer` once the first step has run.

        The buffer is the live tensor, not a copy (as in torch): serialize the
        dict before the next `step`.
        """
        state: StateDict = {"steps": self.steps}
        if self._buf is not None:
            state["momentum_buffer"] = self._buf
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore `steps` and the momentum buffer (copied as float32)."""
        steps = state.get("steps")
        buf = state.get("momentum_buffer")
        if not isinstance(steps, int) or steps < 0:
            raise InvalidUpdateError(
                f"state 'steps' must be an int >= 0, got {steps!r}"
            )
        if buf is not None and not (isinstance(buf, torch.Tensor) and buf.dim() == 1):
            raise InvalidUpdateError("state 'momentum_buffer' must be a 1-D tensor")
        # Copy: later steps write into the buffer, never into a checkpoint dict.
        self._buf = None if buf is None else buf.detach().to(torch.float32, copy=True)
        self.steps = steps


class FedAvgOuterOptimizer:
    """θ ← θ - lr · g, stateless.

    With lr 1 and g = θ_global - mean(θ_local) this lands on the mean of the
    local models, up to float32 rounding (FedAvg); lr < 1 moves part of the way.
    """

    def __init__(self, lr: float = 1.0) -> None:
        _check_lr(lr)
        self.lr = lr

    @property
    def name(self) -> str:
        """Always `fedavg`."""
        return "fedavg"

    def step(self, params: torch.Tensor, pseudo_gradient: torch.Tensor) -> None:
        """Apply θ ← θ - lr · g; leaves `pseudo_gradient` untouched.

        See `OuterOptimizer.step` for the contract.
        """
        _check_step_args(params, pseudo_gradient)
        params.add_(pseudo_gradient, alpha=-self.lr)

    def state_dict(self) -> StateDict:
        """Empty: FedAvg keeps no state between rounds."""
        return {}

    def load_state_dict(self, state: StateDict) -> None:
        """Accept only the empty state that `state_dict` returns."""
        if state:
            raise InvalidUpdateError(
                f"fedavg keeps no state, but got keys {sorted(state)}; was the "
                "checkpoint written by another outer optimizer?"
            )


def build_outer_optimizer(
    name: OuterOptimizerName, lr: float, momentum: float
) -> OuterOptimizer:
    """Build the outer optimizer a coordinator config names.

    Raises:
        ConfigError: unknown `name`, lr or momentum out of range, or momentum
            > 0 for fedavg (which has none: use `nesterov` for momentum).
    """
    if name == "nesterov":
        return NesterovOuterOptimizer(lr=lr, momentum=momentum)
    if name in ("fedavg", "sparseloco"):  # SparseLoCo's outer step is plain SGD
        if momentum != 0:
            raise ConfigError(
                f"outer momentum {momentum} was given for fedavg, which has no "
                "momentum; set it to 0 or use outer_optimizer = 'nesterov'"
            )
        return FedAvgOuterOptimizer(lr=lr)
    raise ConfigError(
        f"unknown outer optimizer {name!r}; expected 'nesterov', 'fedavg' or "
        "'sparseloco'"
    )
