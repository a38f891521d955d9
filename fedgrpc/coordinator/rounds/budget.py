"""The run's privacy budget: what each round releases, and whether it may.

The round engine holds one `PrivacyBudget` around the Privacy stage
(`privacy.stage`) and the run's `PrivacyLedger`. Per round, on the apply
thread and under the numeric lock:

    release = budget.release_of(closing)     # the round's Gaussian release
    refusal = budget.refusal(release, r)     # would it take ε past max_epsilon?
    budget.noise(aggregate, n, release)      # stage adds noise; ledger records

A refused round is not applied and the run finishes (as after
`max_rounds`): the model clients pull is the last one within the budget.
A round the divergence guard throws away after its noise was drawn still
counts: whether it was thrown away is a function of the noised aggregate,
which was then, in that sense, released.

ε(δ) is asked of dp-accounting once per round (`privacy.running`: the
history is not recomposed) and cached, so status, metrics and RoundClosed
read a float.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass
from typing import Any

import torch

from fedgrpc.aggregate.staged import UpdateClip
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.records import OpenRound, RoundResult
from fedgrpc.errors import ConfigError
from fedgrpc.log import get_logger
from fedgrpc.privacy import LedgerState, Neighbouring, PrivacyLedger, Release
from fedgrpc.privacy.distributed import DistributedGaussian
from fedgrpc.privacy.running import RunningEpsilon
from fedgrpc.privacy.stage import PrivacyStage

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PrivacyReport:
    """The run's privacy now, for status, metrics and the simulate summary."""

    mode: str
    """`off`, `central`, `distributed`."""
    epsilon: float
    """ε at `delta` of every round applied so far (0: none, or privacy off)."""
    delta: float
    max_epsilon: float
    """The budget (0: none)."""
    clip_norm: float
    """S the next round clips to (moves under adaptive clipping)."""
    noise_multiplier: float
    """z the ledger accounts per round."""
    accountant: str
    neighbouring: str
    """`add_or_remove_one`, or `replace_one` under `selection = random`."""

    @property
    def remaining(self) -> float:
        """max_epsilon - ε (inf without a budget)."""
        if self.max_epsilon <= 0:
            return math.inf
        return max(0.0, self.max_epsilon - self.epsilon)

    def status_fields(self) -> dict[str, Any]:
        """The fields GetStatus and `Coordinator.status()` share (zeros when off)."""
        return {
            "privacy": self.mode,
            "privacy_epsilon": self.epsilon,
            "privacy_delta": self.delta if self.mode != "off" else 0.0,
            "max_epsilon": self.max_epsilon,
            "dp_clip_norm": self.clip_norm,
            "dp_noise_multiplier": self.noise_multiplier,
        }


class PrivacyBudget:
    """The Privacy stage, the ledger, and `max_epsilon` (one per engine)."""

    def __init__(self, config: CoordinatorConfig, stage: PrivacyStage) -> None:
        """Start with an empty ledger (a checkpoint may `load_state_dict` one)."""
        self.config = config
        self.stage = stage
        self.enabled = config.privacy != "off"
        neighbouring: Neighbouring = getattr(stage, "neighbouring", "add_or_remove_one")
        self._running: RunningEpsilon | None = None
        if self.enabled:
            ledger = PrivacyLedger(config.dp_accountant, neighbouring)
            self._running = RunningEpsilon(ledger, config.dp_delta)
        self.epsilon = 0.0
        """ε(δ) of the ledger, recomputed after each recorded round."""
        self.exhausted = False
        """A round was refused: the run finished on its budget."""
        self.seed: int | None = None
        """Tests only: a fixed noise seed; None draws one from the OS per round."""
        if isinstance(stage, DistributedGaussian):  # it releases when it unmasks
            stage.budget = self.refusal
        self._round_clip_norm = 0.0

    @property
    def ledger(self) -> PrivacyLedger | None:
        """Every release the run made (None with privacy off)."""
        return self._running.ledger if self._running is not None else None

    @property
    def clip(self) -> UpdateClip | None:
        """The per-update clip the summed round calls at commit (None: off)."""
        return self.stage.clip_update if self.enabled else None

    @property
    def clip_norm(self) -> float:
        """S now (0 with privacy off)."""
        return float(getattr(self.stage, "clip_norm", 0.0)) if self.enabled else 0.0

    @property
    def noise_multiplier(self) -> float:
        """The z the ledger accounts (0 with privacy off)."""
        return float(getattr(self.stage, "noise_multiplier", 0.0))

    def release_of(self, closing: OpenRound) -> Release | None:
        """What applying `closing` would release (None: privacy off)."""
        if closing.selected is not None:  # a sample of the candidates
            return self.stage.round_release(len(closing.selected), closing.population)
        return self.stage.round_release(len(closing.contributors), 0)

    def unapplied(self) -> None:
        """Record what a round that is not applied released anyway.

        Central noise is drawn only for an applied round: nothing. A
        distributed sum was released when it was unmasked, even if the
        round is then thrown away (a sparse round's guard): it counts.
        """
        if isinstance(self.stage, DistributedGaussian) and self._running is not None:
            release = self.stage.round_release(0, 0)
            if release is not None:
                self.epsilon = self._running.record(release)

    def refusal(self, release: Release | None, round_id: int = 0) -> str | None:
        """Why the round must not be applied under `max_epsilon`, or None.

        Also asked by distributed DP before it unmasks a sum (`round_id` 0:
        the masked round in progress).
        """
        limit = self.config.max_epsilon
        if release is None or self._running is None or limit <= 0:
            return None
        delta = self.config.dp_delta
        after = self._running.epsilon_after(release)
        if after <= limit:
            return None
        self.exhausted = True
        log.warning("privacy_budget_exhausted", round=round_id, epsilon=self.epsilon,
                    epsilon_after=after, max_epsilon=limit, delta=delta)  # fmt: skip
        which = f"round {round_id}" if round_id else "this round's sum"
        return (
            f"privacy budget: applying {which} would take epsilon from "
            f"{self.epsilon:.4g} to {after:.4g} at delta {delta:g}, past max_epsilon "
            f"= {limit:g}; the round is not applied and the run is finished"
        )

    def noise(
        self, aggregate: torch.Tensor, contributors: int, release: Release | None
    ) -> None:
        """Let the stage add its noise to the round's mean, then record the release."""
        if not self.enabled:
            return
        self._round_clip_norm = self.clip_norm  # S this round clipped to
        generator = torch.Generator()
        generator.manual_seed(
            self.seed if self.seed is not None else secrets.randbits(63)
        )
        self.stage.finish_aggregate(aggregate, contributors, generator)
        if release is not None and self._running is not None:
            self.epsilon = self._running.record(release)

    def annotate(self, result: RoundResult) -> RoundResult:
        """`result` with the run's ε after it, S it clipped to, and the budget."""
        if not self.enabled:
            return result
        # S the round's updates were clipped to: before an applied round's
        # adaptive step; the current one for a round that drew no noise.
        clip_norm = self._round_clip_norm or self.clip_norm
        self._round_clip_norm = 0.0
        return dataclasses.replace(
            result,
            privacy_epsilon=self.epsilon,
            privacy_delta=self.config.dp_delta,
            max_epsilon=self.config.max_epsilon,
            dp_clip_norm=clip_norm,
            dp_noise_multiplier=self.noise_multiplier,
            privacy_exhausted=self.exhausted,
            run_finished=result.run_finished or self.exhausted,
        )

    def report(self) -> PrivacyReport:
        """The run's privacy now."""
        ledger = self.ledger
        return PrivacyReport(
            mode=self.config.privacy,
            epsilon=self.epsilon,
            delta=self.config.dp_delta,
            max_epsilon=self.config.max_epsilon,
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            accountant=self.config.dp_accountant,
            neighbouring=ledger.neighbouring if ledger is not None else "",
        )

    def would_exceed_again(self) -> bool:
        """After a restart: is the budget still too small for another such round?"""
        running = self._running
        if running is None or not running.ledger.releases:
            return False
        if self.config.max_epsilon <= 0:
            return False
        last = dataclasses.replace(running.ledger.releases[-1], count=1)
        return running.epsilon_after(last) > self.config.max_epsilon

    def state_dict(self) -> dict[str, Any] | None:
        """The ledger's releases and the stage's state (None with privacy off)."""
        if self.ledger is None:
            return None
        method = getattr(self.stage, "state_dict", None)
        return {
            "ledger": self.ledger.state().to_json(),
            "stage": dict(method()) if callable(method) else {},
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore `state_dict`: the same releases, so the same ε.

        A checkpoint of a run without privacy restores nothing (the run
        spent nothing before); one written under another accountant is
        recomputed under this one from the same releases.
        """
        if state is None:
            return
        if self._running is None:  # privacy turned off since
            dropped = len(state["ledger"]["releases"])
            log.warning("checkpoint_privacy_ledger_dropped", releases=dropped)
            return
        saved = LedgerState.from_json(state["ledger"])
        current = self._running.ledger.neighbouring
        if saved.neighbouring != current:
            raise ConfigError(
                f"the checkpointed run accounted its rounds under "
                f"{saved.neighbouring} adjacency, but this config gives "
                f"{current} (selection changed between 'random' "
                "and 'all'); restore the selection to resume, or use a new "
                "checkpoint_dir"
            )
        ledger = PrivacyLedger(
            self.config.dp_accountant, saved.neighbouring, saved.releases
        )
        self._running = RunningEpsilon(ledger, self.config.dp_delta)
        method = getattr(self.stage, "load_state_dict", None)
        if callable(method) and state.get("stage"):
            method(state["stage"])
        self.epsilon = self._running.epsilon
