"""FedProx on the client: the proximal term's gradient, added at the optimizer step.

FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks",
eq. 2) has each client minimise, during round t,

    h(w) = F(w) + μ/2 · ‖w - w^t‖²,     so     ∇h(w) = ∇F(w) + μ · (w - w^t),

where F is the user's own loss and w^t the global weights the round started
from. The user does not change their loss: `ProximalTerm` adds μ · (w - w^t)
to each parameter's `.grad` right before their optimizer steps, one
vectorised in-place op per tensor (the temporary w - w^t is one tensor's
size, never the model's).

Why an optimizer pre-step hook and not a tensor gradient hook:

* gradient accumulation: a tensor hook fires on every `backward()`, so k
  micro-batches would add the term k times; `optimizer.step()` runs once
  per accumulated gradient, so the term is added once.
* AMP: under `GradScaler` the gradients a tensor hook sees are scaled by S,
  and an unscaled term would shrink to μ/S after `unscale_`. `scaler.step`
  unscales first and skips `optimizer.step()` (and this hook) when it found
  Inf/NaN, so the term meets true gradients and never a skipped step.
* frozen parameters (`requires_grad=False`) and parameters without a
  gradient this step have `.grad is None` and are left alone, as the
  optimizer leaves them. Sparse gradients (`nn.Embedding(sparse=True)`)
  are left alone too, with one warning: a dense term would densify them.
* torch.distributed: each rank runs its own `optimizer.step()` after DDP
  averaged the gradients, so every rank's replica gets the same term
  (`DistributedDiLoCoClient` gives ranks other than 0 their own w^t).

The hook is process-wide (`torch.optim.optimizer.register_optimizer_step_pre_hook`),
because the client never sees the user's optimizer; it touches only the
parameters it was built with, in whatever optimizer holds them. An
optimizer that computes gradients inside `step(closure)` (L-BFGS) would see
the term before its closure runs and is not supported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle

from fedgrpc.errors import ConfigError
from fedgrpc.log import get_logger

log = get_logger(__name__)


class ProximalTerm:
    """Adds μ · (w - w^t) to the gradients of `params` at every optimizer step.

    w^t is what `anchor_to` was last given (nothing is added before the
    first call). Not thread-safe: anchor and step from the training thread.
    """

    def __init__(self, params: Sequence[torch.Tensor], mu: float) -> None:
        """Install the hook for `params` with strength `mu` (> 0, finite).

        Raises:
            ConfigError: `mu` is not a finite number > 0.
        """
        if not (math.isfinite(mu) and mu > 0):
            raise ConfigError(f"proximal_mu={mu!r} is invalid: expected finite > 0")
        self.mu = mu
        self._params = list(params)
        # id() keys: tensors compare elementwise, so a dict keyed by them is unsafe.
        self._index = {id(param): i for i, param in enumerate(self._params)}
        self._anchors: list[torch.Tensor | None] = [None] * len(self._params)
        self._copies: list[torch.Tensor | None] = [None] * len(self._params)
        """Our own buffers for anchors that live on another device or dtype."""
        self._warned_sparse = False
        self._handle: RemovableHandle | None = register_optimizer_step_pre_hook(
            self._pre_step
        )

    def anchor_to(self, weights: Sequence[torch.Tensor]) -> None:
        """Set w^t, one tensor per parameter in order (the weights just loaded).

        A tensor already on the parameter's device in its dtype is used as
        is, not copied: the caller must keep it unchanged until the next
        call (`LocalRun` passes views of its downlink buffer, rewritten only
        by the next pull). Others (a GPU model) are copied into one buffer
        per parameter on its device, allocated at the first call.
        """
        for i, (param, weight) in enumerate(zip(self._params, weights, strict=True)):
            weight = weight.detach().reshape(param.shape)
            if weight.device == param.device and weight.dtype == param.dtype:
                self._anchors[i] = weight
                continue
            copy = self._copies[i]
            if copy is None:
                copy = torch.empty_like(param, memory_format=torch.contiguous_format)
                self._copies[i] = copy
            self._anchors[i] = copy.copy_(weight)

    def _pre_step(
        self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any
    ) -> None:
        """The hook: ∇h = ∇F + μ(w - w^t) for our parameters in `optimizer`.

        `args`/`kwargs` are the optimizer's step arguments (unused; Any as
        torch types them).
        """
        for group in optimizer.param_groups:
            for param in group["params"]:
                i = self._index.get(id(param))
                if i is None or param.grad is None:
                    continue
                anchor = self._anchors[i]
                if anchor is None:
                    continue
                if param.grad.is_sparse:  # nn.Embedding(sparse=True): no dense add
                    self._warn_sparse()
                    continue
                # One tensor-sized temporary: grad += μ · (w - w^t).
                param.grad.add_(torch.sub(param.detach(), anchor), alpha=self.mu)

    def _warn_sparse(self) -> None:
        if not self._warned_sparse:
            self._warned_sparse = True
            log.warning(
                "fedprox_sparse_gradient_skipped",
                reason="a parameter has a sparse gradient; FedProx leaves it out",
            )

    def close(self) -> None:
        """Remove the hook; later optimizer steps are plain again. Idempotent."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
