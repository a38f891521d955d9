"""The workers of bench/robustness.py's runs: honest training and the attacks.

Not a benchmark itself. Every attack is the library's: data poisoning with
`fedgrpc.sim.poison` (flip_labels; plant_backdoor with the simulator's
generator seed), model poisoning with the `update_transform` that
`fedgrpc.sim.attacks.build_transform` gives a real client (signflip,
scaling, gaussian, the backdoor's boost) or, for the colluding kinds, with
`alie` / `ipm` over the attackers' own honest updates (what `Colluders`
exchanges between client processes; here they share one process). Which
workers attack is `assign_attackers(seed)`, as in `fedgrpc simulate`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from _convergence_sim import DEFAULTS, _Data

from fedgrpc.client.transform import UpdateContext
from fedgrpc.sim.attack_spec import COLLUDING, AttackSpec, assign_attackers
from fedgrpc.sim.attacks import AttackPlan, alie, build_transform, ipm
from fedgrpc.sim.models import build_model, make_inner_optimizer, train_step
from fedgrpc.sim.poison import flip_labels, plant_backdoor
from fedgrpc.wire.tensors import flatten_fp32, load_flat_fp32

if TYPE_CHECKING:
    from _robustness_sim import RobustCase

Batch = tuple[torch.Tensor, torch.Tensor]


def attack_plans(case: RobustCase) -> dict[int, AttackPlan]:
    """Worker index -> its orders; the simulator's seeded choice of attackers."""
    if case.attack == "none":
        return {}
    spec = AttackSpec(case.attack, case.attackers / case.workers)  # type: ignore[arg-type]
    chosen = assign_attackers((spec,), case.workers, case.seed)
    members = tuple(sorted(chosen))
    assert len(members) == case.attackers, (members, case)
    return {
        w: AttackPlan(spec, w, case.workers, members, case.seed, collusion_dir="")
        for w in members
    }


def poisoner(
    case: RobustCase, plan: AttackPlan | None, w: int
) -> Callable[[Batch], Batch]:
    """What worker `w` does to each training batch (as `fedgrpc.sim.worker`)."""
    kind = None if plan is None else plan.spec.kind
    if kind == "labelflip":
        return flip_labels
    if kind == "backdoor":
        generator = torch.Generator().manual_seed(case.seed * 1_000 + w + 7)
        return lambda batch: plant_backdoor(batch, generator)
    return lambda batch: batch


class Worker:
    """A DiLoCo worker: its own model and AdamW, kept across rounds."""

    def __init__(self, case: RobustCase, index: int, plan: AttackPlan | None) -> None:
        self.case, self.index, self.plan = case, index, plan
        self.model = build_model(DEFAULTS.model, seed=case.seed)
        self.optimizer = make_inner_optimizer(self.model, DEFAULTS)
        self.poison = poisoner(case, plan, index)
        self.transform = None if plan is None else transform_for(plan)
        self.samples = case.inner_steps * DEFAULTS.batch_size

    def train(self, global_flat: torch.Tensor, data: _Data, spec: Any) -> torch.Tensor:
        """H steps from the global weights; the honest pseudo-gradient θg - θl."""
        params = list(self.model.parameters())
        load_flat_fp32(params, spec, global_flat)
        for _ in range(self.case.inner_steps):
            batch = self.poison(data.batch(self.index))
            train_step(self.model, self.optimizer, batch, DEFAULTS.grad_clip_norm)
        return global_flat - flatten_fp32(params, spec)


def transform_for(plan: AttackPlan) -> Any:
    """The real client's transform, except the colluders' file exchange."""
    if plan.spec.kind in COLLUDING:
        return None  # applied over the attackers' updates together (`_collude`)
    return build_transform(plan)


def collude(plans: dict[int, AttackPlan], deltas: dict[int, torch.Tensor]) -> None:
    """ALIE / IPM: every colluder sends the same vector from their honest rows."""
    members = sorted(w for w in plans if w in deltas)
    if not members or plans[members[0]].spec.kind not in COLLUDING:
        return
    plan = plans[members[0]]
    honest = torch.stack([deltas[w] for w in members])
    if plan.spec.kind == "alie":
        sent = alie(honest, plan.alie_z)
    else:
        sent = ipm(honest, plan.spec.value or 0.0)
    for w in members:
        deltas[w] = sent.clone()


def apply_attacks(
    plans: dict[int, AttackPlan],
    workers: list[Worker],
    deltas: dict[int, torch.Tensor],
    ids: list[str],
    round_id: int,
) -> None:
    """Replace each attacker's honest update by what its attack sends."""
    collude(plans, deltas)
    for w in deltas:
        transform = workers[w].transform
        if transform is None:
            continue
        context = UpdateContext(ids[w], round_id, round_id - 1, workers[w].samples)
        out = transform(deltas[w], context)
        deltas[w] = deltas[w] if out is None else out
