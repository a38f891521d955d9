"""The SGD family of outer optimizers: Nesterov (DiLoCo), FedAvgM, FedAvg.

One job: θ ← θ - lr · (some running sum of the pseudo-gradient g). The sum
is nothing (FedAvg), a heavy-ball buffer (FedAvgM) or a heavy-ball buffer
read one step ahead (Nesterov). g = θ_global - mean(θ_local) is
gradient-like (see `fedgrpc.optim.outer`), so every rule here subtracts.

Memory: at most one lazily allocated float32 momentum buffer of the model's
size; Nesterov's look-ahead is computed in the caller's pseudo-gradient
buffer, which the contract lets it overwrite.
"""

from __future__ import annotations

import torch

from fedgrpc.errors import InvalidUpdateError
from fedgrpc.optim.outer import (
    StateDict,
    check_buffer_fits,
    check_lr,
    check_step_args,
    check_unit_interval,
    load_buffer,
    load_steps,
)


class _MomentumSGD:
    """Shared by Nesterov and FedAvgM: the heavy-ball buffer, its state, its checks.

    The buffer follows `torch.optim.SGD` (dampening 0, no weight decay):

        b ← g                      first step (torch clones g)
        b ← momentum · b + g       later steps
    """

    def __init__(self, lr: float, momentum: float) -> None:
        check_lr(lr)
        # momentum 0 degenerates to plain SGD; the config allows it.
        check_unit_interval(momentum, "momentum")
        self.lr = lr
        self.momentum = momentum
        self.steps = 0
        self._buf: torch.Tensor | None = None

    def _advance_buffer(
        self, params: torch.Tensor, pseudo_gradient: torch.Tensor
    ) -> torch.Tensor:
        """Validate everything, then b ← momentum · b + g (b ← g the first time)."""
        check_step_args(params, pseudo_gradient)
        buf = self._buf
        check_buffer_fits(buf, params, "momentum buffer")
        if buf is not None and buf.device != params.device:
            # A checkpoint loaded on CPU meets CUDA params: move once, keep there.
            buf = self._buf = buf.to(params.device)
        if buf is None:
            buf = self._buf = pseudo_gradient.clone()
        else:
            buf.mul_(self.momentum).add_(pseudo_gradient)
        return buf

    def state_dict(self) -> StateDict:
        """`steps`, plus `momentum_buffer` once the first step has run.

        The buffer is the live tensor, not a copy (as in torch): serialize the
        dict before the next `step`. The key is shared with the adaptive
        family's first moment: the secure-aggregation index set ranks by it
        and the divergence guard resets it (`coordinator.secure_index`).
        """
        state: StateDict = {"steps": self.steps}
        if self._buf is not None:
            state["momentum_buffer"] = self._buf
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore `steps` and the momentum buffer (copied as float32)."""
        steps = load_steps(state)
        self._buf = load_buffer(state, "momentum_buffer")
        self.steps = steps


class NesterovOuterOptimizer(_MomentumSGD):
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
        super().__init__(lr, momentum)

    @property
    def name(self) -> str:
        """Always `nesterov`."""
        return "nesterov"

    def step(self, params: torch.Tensor, pseudo_gradient: torch.Tensor) -> None:
        """Apply one Nesterov step; overwrites `pseudo_gradient` with the update.

        See `OuterOptimizer.step` for the contract.
        """
        buf = self._advance_buffer(params, pseudo_gradient)
        g = pseudo_gradient
        g.add_(buf, alpha=self.momentum)  # g now holds u, the Nesterov update
        params.add_(g, alpha=-self.lr)
        self.steps += 1


class FedAvgMOuterOptimizer(_MomentumSGD):
    """FedAvg with server momentum (FedAvgM; Hsu, Qi and Brown 2019, arXiv 1909.06335).

    Heavy-ball SGD on the mean pseudo-gradient, the paper's Algorithm
    "FedAvgM": v ← β·v + Δw; w ← w - v, with Δw the (gradient-like) mean
    client update, as ours. A server learning rate η scales the step, as in
    Reddi et al. 2021's FedOpt framing (SGD with momentum as ServerOpt):

        b ← g                      first step (torch clones g; = β·0 + g)
        b ← β · b + g              later steps
        θ ← θ - η · b

    which is `torch.optim.SGD([p], lr=η, momentum=β)` (nesterov=False,
    dampening 0) fed g as `p.grad`. Hsu et al. tune the effective rate
    η / (1 - β); the defaults (η 0.7, β 0.9) give DiLoCo's Nesterov the same
    effective rate. `pseudo_gradient` is left untouched.
    """

    def __init__(self, lr: float = 0.7, momentum: float = 0.9) -> None:
        super().__init__(lr, momentum)

    @property
    def name(self) -> str:
        """Always `fedavgm`."""
        return "fedavgm"

    def step(self, params: torch.Tensor, pseudo_gradient: torch.Tensor) -> None:
        """Apply θ ← θ - η · b after b ← β · b + g.

        See `OuterOptimizer.step` for the contract.
        """
        buf = self._advance_buffer(params, pseudo_gradient)
        params.add_(buf, alpha=-self.lr)
        self.steps += 1


class FedAvgOuterOptimizer:
    """θ ← θ - lr · g, stateless.

    With lr 1 and g = θ_global - mean(θ_local) this lands on the mean of the
    local models, up to float32 rounding (FedAvg); lr < 1 moves part of the way.
    """

    def __init__(self, lr: float = 1.0) -> None:
        check_lr(lr)
        self.lr = lr

    @property
    def name(self) -> str:
        """Always `fedavg`."""
        return "fedavg"

    def step(self, params: torch.Tensor, pseudo_gradient: torch.Tensor) -> None:
        """Apply θ ← θ - lr · g; leaves `pseudo_gradient` untouched.

        See `OuterOptimizer.step` for the contract.
        """
        check_step_args(params, pseudo_gradient)
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
