"""Adaptive outer optimizers: FedAdagrad, FedAdam, FedYogi (Reddi et al. 2021).

"Adaptive Federated Optimization" (Reddi, Charles, Zaheer, Garrett, Rush,
Konečný, Kumar, McMahan; ICLR 2021, arXiv 2003.00295), Algorithm 2. The
server keeps two model-sized float32 moments and moves each coordinate by
its own step size. In the paper's names, with Δ_t the round's mean client
*model difference* x_i - x_t (downhill) and x_t the global weights:

    m_t = β1 · m_{t-1} + (1 - β1) · Δ_t                          (all three)
    v_t = v_{t-1} + Δ_t²                                         FedAdagrad
    v_t = β2 · v_{t-1} + (1 - β2) · Δ_t²                         FedAdam
    v_t = v_{t-1} - (1 - β2) · Δ_t² · sign(v_{t-1} - Δ_t²)       FedYogi
    x_{t+1} = x_t + η · m_t / (√v_t + τ)

with m_{-1} = 0 and v_{-1} ≥ τ² (we take v_{-1} = τ², the paper's bound),
and no bias correction (Algorithm 2 has none). τ is the "degree of
adaptivity": large τ turns the step into momentum SGD with rate η/τ, small
τ into a per-coordinate sign-like step of size ~η; the paper searches
τ ∈ {10^-1, ..., 10^-5} and uses β1 = 0.9, β2 = 0.99.

Sign mapping. Our pseudo-gradient is g = θ_global - θ_local = -Δ_t
(gradient-like, see `fedgrpc.optim.outer`). Squares do not see the sign, so
v is the paper's v exactly; m is stored as m = -m_paper, and the step
becomes θ ← θ - η · m / (√v + τ). Yogi's sign(v - Δ²) is sign(v - g²).

Memory: m and v (each d float32, allocated at the first step) are the
state a checkpoint stores. Every update is in place; the caller's
pseudo-gradient buffer (which the contract lets us overwrite) holds g², then
√v + τ, then the step. Yogi needs sign(v - g²) next to g², so it works in
chunks of `_YOGI_CHUNK` coordinates with one chunk-sized scratch.
"""

from __future__ import annotations

import math

import torch

from fedgrpc.errors import ConfigError, InvalidUpdateError
from fedgrpc.optim.outer import (
    StateDict,
    check_buffer_fits,
    check_lr,
    check_step_args,
    check_unit_interval,
    load_buffer,
    load_steps,
)

_STATE_KEYS = frozenset({"steps", "momentum_buffer", "second_moment"})
_YOGI_CHUNK = 1 << 20
"""Coordinates per Yogi chunk: a 4 MiB scratch, however large the model."""


def _is_valid_second_moment(v: torch.Tensor) -> bool:
    """True if v ≥ 0 and finite everywhere; two reductions, no d-byte mask."""
    return v.numel() == 0 or (float(v.min()) >= 0 and math.isfinite(float(v.sum())))


class _AdaptiveOuterOptimizer:
    """Algorithm 2's shared skeleton; subclasses give the v_t rule.

    State keys: `steps`, `momentum_buffer` (m, our sign: -m_paper; the key
    the momentum family uses, so the secure-aggregation index set ranks by
    it and the divergence guard's reset clears it) and `second_moment` (v).
    """

    def __init__(self, lr: float, beta1: float, tau: float) -> None:
        check_lr(lr)
        check_unit_interval(beta1, "beta1")
        if not (math.isfinite(tau) and tau > 0):
            raise ConfigError(f"outer tau must be a finite number > 0, got {tau}")
        self.lr = lr
        self.beta1 = beta1
        self.tau = tau
        self.steps = 0
        self._m: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def _update_second_moment(self, v: torch.Tensor, g: torch.Tensor) -> None:
        """v_{t-1} -> v_t in place; may overwrite g (scratch)."""
        raise NotImplementedError

    def step(self, params: torch.Tensor, pseudo_gradient: torch.Tensor) -> None:
        """Apply one step of Algorithm 2; overwrites `pseudo_gradient` (scratch).

        See `OuterOptimizer.step` for the contract.
        """
        m, v = self._moments(params, pseudo_gradient)  # validates; writes nothing
        g = pseudo_gradient
        # m_t = β1 m_{t-1} + (1 - β1) Δ_t, in our sign (m = -m_paper, g = -Δ_t).
        m.mul_(self.beta1).add_(g, alpha=1 - self.beta1)
        self._update_second_moment(v, g)  # g is scratch from here on
        # x_{t+1} = x_t + η m_t / (√v_t + τ)  ->  θ ← θ - η m / (√v + τ)
        torch.sqrt(v, out=g).add_(self.tau)
        torch.div(m, g, out=g)
        params.add_(g, alpha=-self.lr)
        self.steps += 1

    def _moments(
        self, params: torch.Tensor, pseudo_gradient: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate the arguments and the state, then (m, v) on params' device.

        Missing moments start as m_{-1} = 0 and v_{-1} = τ² (first step, or m
        after the divergence guard dropped it).
        """
        check_step_args(params, pseudo_gradient)
        check_buffer_fits(self._m, params, "first moment (momentum_buffer)")
        check_buffer_fits(self._v, params, "second moment (second_moment)")
        m, v = self._m, self._v
        if m is None:
            m = torch.zeros_like(params)
        if v is None:
            v = torch.full_like(params, self.tau**2)
        # A checkpoint loaded on CPU meets CUDA params: move once, keep there.
        self._m, self._v = m.to(params.device), v.to(params.device)
        return self._m, self._v

    def state_dict(self) -> StateDict:
        """`steps`, plus `momentum_buffer` (m) and `second_moment` (v) once stepped.

        The buffers are the live tensors, not copies (as in torch): serialize
        the dict before the next `step`.
        """
        state: StateDict = {"steps": self.steps}
        if self._m is not None:
            state["momentum_buffer"] = self._m
        if self._v is not None:
            state["second_moment"] = self._v
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore steps, m and v (copied as float32); validate all, then commit.

        Raises:
            InvalidUpdateError: unknown keys (another optimizer's state), a
                malformed counter or buffer, moments of different sizes, or a
                negative or non-finite v (√v would poison the model).
        """
        unknown = sorted(set(state) - _STATE_KEYS)
        if unknown:
            raise InvalidUpdateError(
                f"{self.name} state has no keys {unknown}; was the checkpoint "
                "written by another outer optimizer?"
            )
        steps = load_steps(state)
        m = load_buffer(state, "momentum_buffer")
        v = load_buffer(state, "second_moment")
        if m is not None and v is not None and m.numel() != v.numel():
            raise InvalidUpdateError(
                f"state moments differ in size ({m.numel()} vs {v.numel()})"
            )
        if v is not None and not _is_valid_second_moment(v):
            raise InvalidUpdateError(
                "state 'second_moment' must be finite and >= 0 everywhere"
            )
        self._m, self._v, self.steps = m, v, steps

    @property
    def name(self) -> str:
        """Config name; each subclass overrides it."""
        raise NotImplementedError


class FedAdagradOuterOptimizer(_AdaptiveOuterOptimizer):
    """FedAdagrad: v_t = v_{t-1} + Δ_t², so steps shrink as ~1/√t per coordinate.

    Without bias correction the first step is (1 - β1) · η in size (m_0 is
    (1 - β1) Δ_0 and √v_0 ≈ |Δ_0|), hence the larger default η (0.1).
    """

    def __init__(self, lr: float = 0.1, beta1: float = 0.9, tau: float = 1e-3) -> None:
        super().__init__(lr, beta1, tau)

    @property
    def name(self) -> str:
        """Always `fedadagrad`."""
        return "fedadagrad"

    def _update_second_moment(self, v: torch.Tensor, g: torch.Tensor) -> None:
        v.addcmul_(g, g)  # v_t = v_{t-1} + Δ_t²  (g² = Δ_t²)


class _DecayedSecondMoment(_AdaptiveOuterOptimizer):
    """Adam and Yogi: Adagrad's state plus β2, the second moment's decay rate.

    Defaults as Reddi et al. 2021 (β2 = 0.99) with an η of 0.01: their
    per-coordinate steps stay near η once |Δ| ≫ τ, so η sits far below SGD's.
    """

    def __init__(
        self,
        lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        super().__init__(lr, beta1, tau)
        check_unit_interval(beta2, "beta2")
        self.beta2 = beta2


class FedAdamOuterOptimizer(_DecayedSecondMoment):
    """FedAdam: v_t = β2 v_{t-1} + (1 - β2) Δ_t², an exponential average.

    Per-coordinate steps stay near η whatever the scale of Δ (once |Δ| ≫ τ),
    which is why its η (default 0.01) is far below SGD's.
    """

    @property
    def name(self) -> str:
        """Always `fedadam`."""
        return "fedadam"

    def _update_second_moment(self, v: torch.Tensor, g: torch.Tensor) -> None:
        # v_t = β2 v_{t-1} + (1 - β2) Δ_t²
        v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)


class FedYogiOuterOptimizer(_DecayedSecondMoment):
    """FedYogi: v moves towards Δ_t² by (1 - β2) Δ_t², never by a fraction of v.

    Adam's v can shrink by a factor β2 per round and then let one large
    coordinate step blow up; Yogi's additive change (Zaheer et al. 2018)
    keeps v from collapsing. Same defaults as FedAdam.
    """

    @property
    def name(self) -> str:
        """Always `fedyogi`."""
        return "fedyogi"

    def _update_second_moment(self, v: torch.Tensor, g: torch.Tensor) -> None:
        # v_t = v_{t-1} - (1 - β2) Δ_t² sign(v_{t-1} - Δ_t²), chunk by chunk:
        # the sign needs a buffer next to Δ², and a chunk-sized one suffices.
        g.mul_(g)  # g now holds Δ_t²
        n = v.numel()
        scratch = torch.empty(min(n, _YOGI_CHUNK), device=v.device)
        for start in range(0, n, _YOGI_CHUNK):  # over chunks, not elements
            v_c, sq_c = v[start : start + _YOGI_CHUNK], g[start : start + _YOGI_CHUNK]
            sign = scratch[: v_c.numel()]
            torch.sub(v_c, sq_c, out=sign).sign_()  # sign(v_{t-1} - Δ_t²); 0 if equal
            sq_c.mul_(sign)
            v_c.add_(sq_c, alpha=-(1 - self.beta2))
