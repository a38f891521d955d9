"""Record-level DP-SGD inside a client: Opacus does the noise, our ledger the ε.

Cross-silo federations (a hospital's patients): each client must hide every
one of its records, whatever the coordinator or the other clients see.
DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy",
Algorithm 1) does it inside the client's own training: each step samples a
batch by Poisson sampling (every record joins independently with
probability q), clips each record's gradient to L2 norm C, sums them, adds
N(0, (z·C)² I) and averages. One step is one release of the
Poisson-subsampled Gaussian mechanism with noise multiplier z and rate q;
the DiLoCo pseudo-gradient, everything the client sends, is computed from
those releases only, so it is post-processing and costs nothing more.

Opacus does the per-sample clipping, the noise and the Poisson loader (its
`PrivacyEngine.make_private`); every step of its `DPOptimizer` is recorded
as one `Release(z, q)` in a `PrivacyLedger`, composed across every inner
step of every round, and that ledger's ε(δ) (dp-accounting, the same code
path as the coordinator's) is what the client reports in its signed update
header. Opacus' own accountant keeps running but only for cross-checks.

Usage: the user keeps their loop::

    private = RecordDP(target_epsilon=3.0, delta=1e-5, max_grad_norm=1.0, epochs=10)
    model, optimizer, loader = private.make_private(model, optimizer, loader)
    with DiLoCoClient("coord:7070", model, record_dp=private) as client:
        for epoch in range(10):
            for x, y in loader:
                loss = loss_fn(model(x), y); loss.backward()
                optimizer.step(); optimizer.zero_grad()
                client.step(loss, num_samples=len(y))

Why a separate object and not a `DiLoCoClient(dp=...)` flag: DP-SGD changes
the optimizer and the data loader, which the user's loop owns and the
client never sees; `make_private` is the idiom Opacus users already know;
and the same object works without a federation (a bench, one silo). The
client only needs the ε to sign (`record_dp=`). `make_private` returns the
model it was given, not Opacus' `GradSampleModule` wrapper (Opacus'
`wrap_model=False`), so the client federates the parameters under their
own names and shapes.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any

import torch

from fedgrpc.domain.requests import RecordPrivacyClaim
from fedgrpc.errors import ConfigError, PrivacyBudgetExceededError, check_config
from fedgrpc.log import get_logger
from fedgrpc.privacy._library import INSTALL_HINT
from fedgrpc.privacy.ledger import (
    AccountantName,
    LedgerState,
    Neighbouring,
    PrivacyLedger,
    Release,
    noise_for_budget,
)

log = get_logger(__name__)

MAX_SEARCHED_STEPS = 2**40
"""Budget search ceiling: no client takes a trillion steps, so past it the
budget counts as unlimited (`max_epsilon` = inf, or a noise that large)."""


class RecordDP:
    """DP-SGD for one client's training loop, with its (ε, δ) spend.

    Not thread-safe: call from the training loop (as `DiLoCoClient`).
    """

    def __init__(
        self,
        *,
        max_grad_norm: float,
        delta: float = 1e-5,
        target_epsilon: float | None = None,
        noise_multiplier: float | None = None,
        epochs: float | None = None,
        steps: int | None = None,
        max_epsilon: float | None = None,
        accountant: AccountantName = "rdp",
    ) -> None:
        """Plan the privacy of a client's training; `make_private` applies it.

        Args:
            max_grad_norm: C, every record's gradient is clipped to this L2 norm.
            delta: δ of every ε reported (below 1 / records, e.g. 1e-5).
            target_epsilon: calibrate z so that the planned steps spend this ε
                (dp-accounting's calibration over the planned steps). Set
                this or `noise_multiplier`.
            noise_multiplier: z itself (the ε then follows from the steps).
            epochs: planned passes over the loader (with `target_epsilon`;
                steps = ceil(epochs x batches per epoch)). Or `steps`.
            steps: planned DP-SGD steps, over all rounds.
            max_epsilon: the client refuses a step that would take ε(δ)
                past this (`PrivacyBudgetExceededError`). Default: the
                target (so training stops where it was planned to), or no
                limit with a fixed `noise_multiplier`.
            accountant: `rdp` or `pld` (tighter, slower).

        Raises:
            ConfigError: a setting out of range, both or neither of
                target_epsilon and noise_multiplier, a target without a plan.
        """
        _check_positive("max_grad_norm", max_grad_norm)
        check_config(0 < delta < 1, "delta", delta, "in (0, 1)")
        check_config((target_epsilon is None) != (noise_multiplier is None),
                     "target_epsilon", target_epsilon,
                     "a value, or noise_multiplier instead (exactly one)")  # fmt: skip
        if target_epsilon is not None:
            _check_positive("target_epsilon", target_epsilon)
            check_config((epochs is None) != (steps is None), "epochs", epochs,
                         "a number of epochs, or steps instead (exactly one) "
                         "with target_epsilon")  # fmt: skip
        if noise_multiplier is not None:
            _check_positive("noise_multiplier", noise_multiplier)
        if epochs is not None:
            _check_positive("epochs", epochs)
        if steps is not None:
            check_config(steps >= 1, "steps", steps, ">= 1")
        if max_epsilon is None:
            max_epsilon = target_epsilon if target_epsilon is not None else math.inf
        check_config(max_epsilon > 0, "max_epsilon", max_epsilon, "> 0 (inf: none)")
        self.max_grad_norm = float(max_grad_norm)
        self.delta = float(delta)
        self.target_epsilon = target_epsilon
        self.noise_multiplier = noise_multiplier
        """z (calibrated by `make_private` when a target was given)."""
        self.epochs, self.planned_steps = epochs, steps
        self.max_epsilon = float(max_epsilon)
        self.sample_rate = 0.0
        """q = 1 / batches per epoch (set by `make_private`)."""
        self.ledger = PrivacyLedger(accountant)
        self._within_budget: int | None = None
        """Steps left before max_epsilon (computed once, then counted down)."""
        self._epsilon_at: tuple[int, float] = (0, 0.0)
        self._opacus_hook: Any = None
        self.engine: Any = None
        """Opacus' `PrivacyEngine` (its accountant is for cross-checks only)."""

    # -- the user's objects ------------------------------------------------------

    def make_private(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: torch.utils.data.DataLoader[Any],
        **opacus_options: Any,
    ) -> tuple[torch.nn.Module, Any, torch.utils.data.DataLoader[Any]]:
        """The model (unchanged), a DP optimizer and a Poisson loader, for the loop.

        `opacus_options` go to Opacus' `make_private` (e.g. `clipping`,
        `grad_sample_mode`, or a seeded `noise_generator` for reproducible
        tests and benches: predictable noise is no noise). The model must
        be one Opacus supports (`opacus.validators.ModuleValidator.fix`
        replaces BatchNorm).

        Raises:
            ConfigError: called twice, Opacus missing, or the target cannot
                be reached with the planned steps.
        """
        if self.engine is not None:
            raise ConfigError("RecordDP.make_private was already called; make one "
                              "RecordDP per model, optimizer and loader")  # fmt: skip
        engine_class = _privacy_engine()
        batches = len(loader)
        check_config(batches >= 1, "loader", batches, "at least one batch")
        self.sample_rate = 1.0 / batches  # what Opacus' Poisson loader samples with
        if self.planned_steps is None and self.epochs is not None:
            self.planned_steps = math.ceil(self.epochs * batches)
        if self.noise_multiplier is None:
            assert self.target_epsilon is not None
            assert self.planned_steps is not None
            self.noise_multiplier = _calibrated(
                self.target_epsilon, self.delta, self.sample_rate,
                self.planned_steps, self.ledger.accountant, self.ledger.neighbouring,
            )  # fmt: skip
        self.engine = engine_class(accountant="rdp")
        _, dp_optimizer, dp_loader = self.engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader,
            noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm,
            poisson_sampling=True, wrap_model=False, **opacus_options,
        )  # fmt: skip
        self._opacus_hook = dp_optimizer.step_hook
        dp_optimizer.attach_step_hook(self._before_release)
        log.info("record_dp_ready", noise_multiplier=round(self.noise_multiplier, 4),
                 sample_rate=self.sample_rate, max_grad_norm=self.max_grad_norm,
                 planned_steps=self.planned_steps, delta=self.delta,
                 max_epsilon=self.max_epsilon)  # fmt: skip
        return model, dp_optimizer, dp_loader

    # -- the spend ---------------------------------------------------------------

    @property
    def steps(self) -> int:
        """DP-SGD steps recorded (resumed ones included)."""
        return sum(r.count for r in self.ledger.releases)

    @property
    def epsilon(self) -> float:
        """ε at `delta` of every step so far (recomputed only after new steps)."""
        steps = self.steps
        if steps != self._epsilon_at[0]:
            self._epsilon_at = (steps, self.ledger.epsilon(self.delta))
        return self._epsilon_at[1]

    def claim(self) -> RecordPrivacyClaim:
        """What the client signs into its update header: ε, δ and the steps."""
        return RecordPrivacyClaim(self.epsilon, self.delta, self.steps)

    def state(self) -> LedgerState:
        """The ledger to save with the model; `resume` reads it back."""
        return self.ledger.state()

    def resume(self, state: LedgerState) -> None:
        """Continue the spend `state()` saved, before training on.

        A restarted client's ε must not restart at 0: the coordinator
        refuses a claim below the client's last one.
        """
        self.ledger = PrivacyLedger.restore(state)
        self._within_budget = None  # priced again on the restored ledger

    def opacus_epsilon(self) -> float:
        """Opacus' own accountant's ε at `delta` (a cross-check, never reported)."""
        if self.engine is None:
            return 0.0
        return float(self.engine.accountant.get_epsilon(self.delta))

    def _before_release(self, optimizer: Any) -> None:
        """Opacus' step hook: after the noise, before the model moves.

        Raising here leaves the model as it was, so the refused step
        releases nothing.
        """
        assert self.noise_multiplier is not None
        release = Release(self.noise_multiplier, self.sample_rate)
        if self._within_budget is None:
            self._within_budget = self._steps_within_budget(release)
        if self._within_budget <= 0:
            spent = self.epsilon
            log.warning("record_dp_budget_spent", epsilon=spent, steps=self.steps,
                        max_epsilon=self.max_epsilon)  # fmt: skip
            raise PrivacyBudgetExceededError(
                f"record-level DP budget spent: step {self.steps + 1} would take "
                f"ε(δ={self.delta:g}) past max_epsilon={self.max_epsilon:g} (spent "
                f"{spent:.3f} over {self.steps} steps). The model so far is private "
                "at that ε: stop training and close the client, or raise "
                "max_epsilon knowingly"
            )
        self.ledger.record(release)
        self._within_budget -= 1
        if self._opacus_hook is not None:
            self._opacus_hook(optimizer)

    def _steps_within_budget(self, release: Release) -> int:
        """The most further `release`s whose ε stays <= max_epsilon.

        ε grows with the count, so doubling then bisection finds it in
        O(log k) accountant calls (~0.1 s each), once per run instead of
        once per step. Each count is priced on the ledger it would produce
        (identical releases merged), exactly as the real one will hold it.
        """
        if math.isinf(self.max_epsilon):
            return MAX_SEARCHED_STEPS

        def fits(count: int) -> bool:
            more = Release(release.noise_multiplier, release.sampling_rate, count)
            trial = PrivacyLedger(self.ledger.accountant, self.ledger.neighbouring,
                                  [*self.ledger.releases, more])  # fmt: skip
            return trial.epsilon(self.delta) <= self.max_epsilon

        planned = max(1, (self.planned_steps or 1) - self.steps)
        if not fits(1):
            return 0
        low, high = 1, planned  # low fits; find a high that does not
        if fits(high):
            low, high = high, high + 1
            while fits(high):
                if high >= MAX_SEARCHED_STEPS:
                    return MAX_SEARCHED_STEPS
                low, high = high, high * 2
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low


def unwrap_module(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside an Opacus `GradSampleModule` (others as given).

    A user who called Opacus directly hands the client its wrapper, whose
    parameters are named `_module.<name>`: the federation's model has the
    plain names. Only looks if Opacus is already imported (it is, then).
    """
    if "opacus" not in sys.modules:
        return model
    from opacus.grad_sample import AbstractGradSampleModule

    if isinstance(model, AbstractGradSampleModule):
        inner = model._module
        assert isinstance(inner, torch.nn.Module)
        return inner
    return model


@functools.lru_cache(maxsize=64)
def _calibrated(
    target: float, delta: float, rate: float, steps: int,
    accountant: AccountantName, neighbouring: Neighbouring,
) -> float:  # fmt: skip
    """`noise_for_budget` for `steps` DP-SGD steps, computed once per plan.

    A bisection over the accountant (seconds at low noise); silos of one
    process (benches, simulations) that share a plan share the answer.
    """
    plan = Release(1.0, rate, steps)
    return noise_for_budget(target, delta, plan, accountant, neighbouring)


def _check_positive(name: str, value: float) -> None:
    check_config(math.isfinite(value) and value > 0, name, value, "finite > 0")


def _privacy_engine() -> Any:
    """Opacus' `PrivacyEngine`, or the extra to install."""
    try:
        from opacus import PrivacyEngine
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise ConfigError(f"record-level DP-SGD needs Opacus: {INSTALL_HINT}") from exc
    return PrivacyEngine
