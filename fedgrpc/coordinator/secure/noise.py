"""Distributed DP in masked rounds: what a setup announces, and when not to unmask.

`SecureMode` holds a `MaskedRoundNoise` when `privacy = "distributed"`
(`fedgrpc.privacy.distributed` has the mechanism, its math and its trust
model). Per masked round it

1. plans the noise for the round's participants, positions and code step
   and gives the setup its widened ring and `NoiseShareSpec`;
2. refuses to unmask a sum of fewer than `dp_min_survivors` noise shares
   (the round is aborted before the coordinator could see a sum with less
   noise than promised), or one whose release the run's budget refuses
   (`DistributedGaussian.budget`, set by the engine's privacy wiring);
3. tells the stage a noised sum was recovered, with the survivors whose
   shares it holds, so the engine's `round_release` reports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgrpc.config import CoordinatorConfig
from fedgrpc.log import get_logger
from fedgrpc.privacy.distributed import (
    DistributedGaussian,
    NoisePlan,
    build_distributed_stage,
)
from fedgrpc.privacy.ledger import Release
from fedgrpc.secagg import FixedPointScale, NoiseShareSpec

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RoundNoise:
    """What one masked round's setup carries for distributed DP."""

    ring_bits: int
    spec: NoiseShareSpec


class MaskedRoundNoise:
    """The secure mode's side of `DistributedGaussian` (module docstring)."""

    def __init__(self, stage: DistributedGaussian) -> None:
        self.stage = stage
        """The Privacy stage; the engine takes its releases (`round_release`)."""
        self._plans: dict[int, NoisePlan] = {}

    def plan_round(
        self,
        round_id: int,
        scale: FixedPointScale,
        num_positions: int,
        participants: int,
    ) -> RoundNoise:
        """Plan round `round_id`'s noise (kept until it is unmasked or dropped).

        Raises:
            ConfigError: its noise needs a ring over 64 bits.
        """
        plan = self.stage.plan_round(
            dimension=num_positions, step=scale.scale,
            value_bits=scale.value_bits, participants=participants,
        )  # fmt: skip
        self._plans = {round_id: plan}  # one masked round at a time
        log.info("dp_round_planned", round=round_id, client_std=plan.client_std,
                 norm_bound=plan.norm_bound, ring_bits=plan.ring_bits,
                 min_survivors=plan.min_survivors)  # fmt: skip
        spec = NoiseShareSpec(plan.clip_norm, plan.client_std, plan.norm_bound)
        return RoundNoise(plan.ring_bits, spec)

    def refuse_unmask(self, round_id: int, survivors: int) -> str | None:
        """Why a sum of `survivors` noise shares must stay masked (None: unmask)."""
        plan = self._plans.get(round_id)
        if plan is None:  # pragma: no cover - every masked DP round was planned
            return f"round {round_id} has no noise plan"
        return self.stage.refuse_unmask(plan, survivors)

    def unmasked(self, round_id: int, survivors: int) -> Release | None:
        """Round `round_id`'s noised sum was recovered: record its pending release."""
        plan = self._plans.pop(round_id, None)
        if plan is None:  # pragma: no cover - every masked DP round was planned
            log.error("dp_round_without_plan", round=round_id)
            return None
        return self.stage.unmasked(plan, survivors)


def round_noise_for(
    config: CoordinatorConfig, engine_stage: object = None
) -> MaskedRoundNoise | None:
    """The noise of `privacy = "distributed"`, None for any other mode.

    `engine_stage`: the Privacy stage the round engine holds. When it is a
    `DistributedGaussian` the masked rounds arm *that* one, so the engine's
    `round_release` sees what was unmasked; otherwise (an engine without
    privacy wiring) one is built from `config`, reachable as `.stage`.

    Raises:
        ConfigError: noise no 64-bit ring can hold (refused at start).
    """
    if config.privacy != "distributed":
        return None
    if isinstance(engine_stage, DistributedGaussian):
        return MaskedRoundNoise(engine_stage)
    return MaskedRoundNoise(build_distributed_stage(config))
