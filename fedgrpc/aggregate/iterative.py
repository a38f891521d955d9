"""Iterative robust rules: geometric median (smoothed Weiszfeld) and centered clipping.

Both move a centre c toward the honest majority by repeated re-weighted
averages of the updates, and both are unweighted (every client counts once):
a sample count is a client's unverified claim.

**Geometric median**, Pillutla, Kakade, Harchaoui 2022, "Robust Aggregation
for Federated Learning" (IEEE TSP, arXiv 1912.13445), Algorithm 2 (RFA,
smoothed Weiszfeld), with αᵢ = 1/n:

    c⁰ = the medoid: the update uₖ with the least Σⱼ ‖uₖ - uⱼ‖ (see below)
    βᵢ = αᵢ / max(nu, ‖uᵢ - cᵗ‖),   cᵗ⁺¹ = Σᵢ βᵢ uᵢ / Σᵢ βᵢ

for at most T iterations, stopping early once the objective
g(c) = Σᵢ αᵢ ‖uᵢ - c‖ changes by at most `ftol` x g (the paper's rule).
The paper weights by αᵢ = sample counts; we do not, so that a client claiming
many samples cannot move the median (its breakdown point is then half the
*clients*). The paper starts at the mean; we start at the medoid, the
update closest in total to the others, which is an honest one while the
honest are a majority. From the mean, one hostile update of ±huge floats
sits ~huge/n away from the start, Weiszfeld needs ~log_n(huge) steps to
shed it, and the relative `ftol` (measured against an objective that the
hostile distance dominates) stops it long before; from the medoid it is
down-weighted by 1/huge in the first step. Same fixed point: the
objective is convex, so only the path changes. nu > 0 smooths the
objective so that a centre landing on an update does not divide by zero.

**Centered clipping**, Karimireddy, He, Jaggi 2021, "Learning from History
for Byzantine Robust Optimization" (ICML, arXiv 2012.10333), eq. (CC):

    v⁰ = the previous round's aggregate (0 in the first round)
    vˡ⁺¹ = vˡ + (1/n) Σᵢ (uᵢ - vˡ) · min(1, τ / ‖uᵢ - vˡ‖),   l = 0 .. L-1

i.e. vˡ⁺¹ = (1 - S/n) vˡ + Σᵢ (sᵢ/n) uᵢ with sᵢ = min(1, τ/‖uᵢ - vˡ‖) and
S = Σ sᵢ. With τ unset, each step uses τˡ = medianᵢ ‖uᵢ - vˡ‖ (our choice,
scale-free): no minority can move that median far, half the updates are
never clipped, and as vˡ nears the honest majority τˡ shrinks to its spread,
so an outlier's pull (at most τˡ/n per step) shrinks with it. A fixed τ is
the paper's rule: its bias stays f·τ/n per step. The rule is stateful
across rounds (v⁰), so its state is checkpointed (`state_dict`).

Passes: two, whatever T or L. Every centre either rule builds is an affine
combination Σₖ wₖ xₖ (Σ w = 1) of the updates (and of v⁰), so one pass takes
their centred Gram matrix Ĝ (`passes.centered_gram`, float64), the
iterations run on w alone with ‖uᵢ - c‖² = (eᵢ - w)ᵀ Ĝ (eᵢ - w)
(`passes.coefficient_distances`), and a second pass writes the final centre
(`passes.combine`). Same iterates as re-reading the spool each step, except
that the centre is no longer rounded to float32 between steps.

Memory: the centre lives in `out`. Besides `out`, centered clipping keeps
one model-sized float32 vector (v⁰ for the next round); the geometric median
nothing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fedgrpc.aggregate.blockwise import (
    DEFAULT_BLOCK_BYTES,
    as_spool,
    check_out,
    require_committed,
)
from fedgrpc.aggregate.passes import (
    centered_gram,
    coefficient_distances,
    combine,
    pairwise_from_gram,
)
from fedgrpc.aggregate.stages import F64Array, HeldUpdates, Holding
from fedgrpc.errors import ConfigError
from fedgrpc.log import get_logger

log = get_logger(__name__)

GEOMEDIAN_FTOL = 1e-6
"""Relative change of the objective below which Weiszfeld stops (RFA's default)."""


def _positive_int(value: int, setting: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{setting}={value!r} is invalid: expected an integer >= 1")
    return value


def _positive_float(value: float, setting: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{setting}={value!r} is invalid: expected a number > 0")
    return float(value)


class GeometricMedian:
    """The geometric median by smoothed Weiszfeld (RFA, Pillutla et al. 2022)."""

    def __init__(
        self,
        iters: int = 10,
        eps: float = 1e-6,
        ftol: float = GEOMEDIAN_FTOL,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ) -> None:
        """`iters`: at most T Weiszfeld steps; `eps`: the smoothing nu > 0.

        Raises:
            ConfigError: iters < 1 or eps <= 0.
        """
        self.iters = _positive_int(iters, "geomedian_iters")
        self.eps = _positive_float(eps, "geomedian_eps")
        self.ftol = ftol
        self.block_bytes = block_bytes
        self.last_iterations = 0
        """Weiszfeld steps the last `aggregate` took (for tests and the bench)."""

    @property
    def name(self) -> str:
        """Always `geometric_median`."""
        return "geometric_median"

    @property
    def needs(self) -> Holding:
        """`every_update`: each step re-weights every update."""
        return "every_update"

    def aggregate(self, held: HeldUpdates, out: torch.Tensor) -> None:
        """Write the geometric median into `out` (see `Aggregator`); 2 passes."""
        require_committed(held, self.name)
        spool = as_spool(held, self.name)
        center = check_out(out, spool.num_coordinates)
        n = spool.count
        gram = centered_gram(spool, None, self.block_bytes)
        alpha = np.full(n, 1.0 / n)
        pairwise = np.sqrt(pairwise_from_gram(gram[:n, :n]))
        gamma = np.zeros(n)
        gamma[int(np.argmin(pairwise.sum(axis=1)))] = 1.0  # c⁰ = the medoid
        distances = coefficient_distances(gram, gamma, n)
        objective = float(alpha @ distances)
        self.last_iterations = 0
        for _ in range(self.iters):
            beta: F64Array = alpha / np.maximum(self.eps, distances)
            gamma = beta / beta.sum()
            distances = coefficient_distances(gram, gamma, n)
            self.last_iterations += 1
            previous, objective = objective, float(alpha @ distances)
            if abs(previous - objective) <= self.ftol * objective:
                break
        combine(spool, gamma, center, self.block_bytes)
        log.debug(
            "geomedian_done", iterations=self.last_iterations, objective=objective
        )


class CenteredClipping:
    """Karimireddy, He, Jaggi 2021: clip around the previous aggregate, L times."""

    def __init__(
        self,
        tau: float | None = None,
        iters: int = 3,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ) -> None:
        """`tau`: the radius τ (None: each step's median distance); `iters`: L.

        Raises:
            ConfigError: tau <= 0 or iters < 1.
        """
        self.tau = None if tau is None else _positive_float(tau, "clipping_tau")
        self.iters = _positive_int(iters, "clipping_iters")
        self.block_bytes = block_bytes
        self._previous: torch.Tensor | None = None

    @property
    def name(self) -> str:
        """Always `centered_clipping`."""
        return "centered_clipping"

    @property
    def needs(self) -> Holding:
        """`every_update`: each step clips every update around the centre."""
        return "every_update"

    def aggregate(self, held: HeldUpdates, out: torch.Tensor) -> None:
        """Write vᴸ into `out` and keep it as the next round's v⁰; 2 passes."""
        require_committed(held, self.name)
        spool = as_spool(held, self.name)
        center = check_out(out, spool.num_coordinates)
        n = spool.count
        previous = self._previous
        if previous is not None and previous.numel() == out.numel():
            out.copy_(previous)
        else:
            out.zero_()
        # Rows 0..n-1 of Ĝ are the updates, row n is v⁰; vˡ = Σₖ wₖ xₖ.
        gram = centered_gram(spool, center, self.block_bytes)
        gamma = np.zeros(n + 1, dtype=np.float64)
        gamma[n] = 1.0
        distances = coefficient_distances(gram, gamma, n)
        for _ in range(self.iters):
            tau = self.tau if self.tau is not None else float(np.median(distances))
            # sᵢ = min(1, τ/‖uᵢ - v‖), and 1 where uᵢ = v (nothing to clip).
            scale = np.minimum(1.0, tau / np.maximum(distances, 1e-300))
            keep = 1.0 - float(scale.sum()) / n
            gamma *= keep  # vˡ⁺¹ = keep·vˡ + Σᵢ (sᵢ/n) uᵢ
            gamma[:n] += scale / n
            distances = coefficient_distances(gram, gamma, n)
        combine(spool, gamma[:n], center, self.block_bytes, keep=float(gamma[n]))
        if previous is not None and previous.numel() == out.numel():
            previous.copy_(out)
        else:
            self._previous = out.detach().clone()
        log.debug("centered_clipping_done", last_tau=tau, iterations=self.iters)

    def state_dict(self) -> dict[str, Any]:
        """v⁰ of the next round (empty before the first aggregate)."""
        if self._previous is None:
            return {}
        return {"previous_aggregate": self._previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` gave (a checkpoint); {} forgets v⁰."""
        previous = state.get("previous_aggregate")
        if previous is None:
            self._previous = None
            return
        if not isinstance(previous, torch.Tensor) or previous.dim() != 1:
            raise ConfigError(
                "centered_clipping state: previous_aggregate must be a 1-D tensor"
            )
        self._previous = previous.detach().to(torch.float32).clone()
