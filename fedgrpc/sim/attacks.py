"""Model-poisoning attacks: what a Byzantine client sends instead of its update.

Each attack is a function of the attacker's honest pseudo-gradient u (a
flat float32 vector, global - local) and, for the colluding ones, of its
fellow attackers' honest updates. `build_transform` turns an `AttackPlan`
into the `update_transform` hook of `DiLoCoClient` (`fedgrpc.client.
transform`), so the attack runs inside a real client, before compression
and signing: the coordinator receives a validly signed update.

Data poisoning (label flip, the backdoor's training) is in
`fedgrpc.sim.poison`; the grammar and the choice of attackers in
`fedgrpc.sim.attack_spec`. All operations are whole-tensor; nothing loops
over coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import torch

from fedgrpc.client.transform import UpdateContext, UpdateTransform
from fedgrpc.errors import ConfigError
from fedgrpc.sim.attack_spec import COLLUDING, AttackSpec
from fedgrpc.sim.collusion import Colluders

COLLUDE_WAIT_S = 60.0
"""How long an ALIE/IPM attacker waits for its fellows' honest updates."""


def sign_flip(update: torch.Tensor) -> torch.Tensor:
    """-u, in place: the attacker pushes the model up its own loss."""
    return update.neg_()


def scale(update: torch.Tensor, factor: float) -> torch.Tensor:
    """K * u, in place (a boosted update dominates an unweighted mean)."""
    return update.mul_(factor)


def gaussian(
    update: torch.Tensor, sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """Replace u by N(0, (sigma * rms(u))^2) per coordinate, in place.

    rms(u) = ||u||_2 / sqrt(d): sigma is relative to the honest update's
    size, so one default works for any model (the classic Gaussian attack,
    e.g. Xie et al. 2018's, sets an absolute variance tied to its model).
    """
    rms = float(update.norm()) / math.sqrt(max(update.numel(), 1))
    return update.normal_(0.0, sigma * rms, generator=generator)


def alie_z_max(n: int, f: int) -> float:
    """Baruch et al. 2019 ("A Little Is Enough", NeurIPS), sec. 4 / Alg. 3.

    s = floor(n/2 + 1) - f  benign workers the attackers must win over;
    z_max = max z such that Phi(z) < (n - s) / n, i.e. Phi^-1((n - s) / n),
    with Phi the standard normal CDF. E.g. n = 8, f = 2: s = 3,
    Phi^-1(5/8) = 0.3186; n = 10, f = 3: s = 3, Phi^-1(0.7) = 0.5244.

    Raises:
        ConfigError: n < 2, f outside [1, n), or s < 1 (so many attackers
            that the formula has no finite z; pass Z, as in alie:0.6:1.5).
    """
    if n < 2 or not 1 <= f < n:
        raise ConfigError(f"ALIE needs 1 <= f < n and n >= 2; got n={n}, f={f}")
    s = math.floor(n / 2 + 1) - f
    if s < 1:
        raise ConfigError(
            f"ALIE's z_max is unbounded for n={n}, f={f} (s = floor(n/2 + 1) - f "
            f"= {s} < 1); give Z explicitly, e.g. alie:{f / n:g}:1.5"
        )
    return NormalDist().inv_cdf((n - s) / n)


def alie(honest: torch.Tensor, z: float) -> torch.Tensor:
    """ALIE's update: mu - z * sigma per coordinate over the rows of `honest` [k, d].

    sigma is the sample standard deviation (Bessel's correction); with one
    row it is 0 and the attack degenerates to sending the honest mean.
    """
    if honest.shape[0] < 2:
        return honest.mean(dim=0)
    sigma, mu = torch.std_mean(honest, dim=0, correction=1)
    return mu.sub_(sigma.mul_(z))


def ipm(honest: torch.Tensor, epsilon: float) -> torch.Tensor:
    """-epsilon * mean of the rows of `honest` [k, d].

    Xie, Koyejo and Gupta 2020 ("Fall of Empires", UAI 2019, PMLR 115),
    sec. 3: the inner product of the aggregate with the true gradient turns
    negative; a small epsilon stays inside what median-like rules accept.
    """
    return honest.mean(dim=0).mul_(-epsilon)


@dataclass(frozen=True, slots=True)
class AttackPlan:
    """One attacker's orders (picklable, for a `spawn`ed client process)."""

    spec: AttackSpec
    index: int
    """This client's index in the simulation."""
    clients: int
    """n: all clients of the run."""
    members: tuple[int, ...]
    """Client indices running the same attack (this one included): f = len."""
    seed: int
    collusion_dir: str
    """Where colluding kinds (alie, ipm) exchange honest updates; others ignore it."""

    @property
    def alie_z(self) -> float:
        """Z in effect for alie: the given one, or z_max(n, f)."""
        if self.spec.param is not None:
            return self.spec.param
        return alie_z_max(self.clients, len(self.members))


def build_transform(plan: AttackPlan) -> UpdateTransform | None:
    """The `update_transform` that carries out `plan` (None: send honestly)."""
    spec, value = plan.spec, plan.spec.value
    if spec.kind == "signflip":
        return lambda update, _: sign_flip(update)
    if spec.kind in ("scaling", "backdoor"):
        factor = 1.0 if value is None else value
        if factor == 1.0:
            return None  # a backdoor without boost: its training is the attack
        return lambda update, _: scale(update, factor)
    if spec.kind == "gaussian":
        sigma = 1.0 if value is None else value
        return lambda update, context: gaussian(
            update, sigma, _generator(plan, context.round_id)
        )
    if spec.kind in COLLUDING:
        return _colluding(plan)
    return None  # labelflip: the poisoned training is the attack


def _colluding(plan: AttackPlan) -> UpdateTransform:
    colluders = Colluders(
        Path(plan.collusion_dir), plan.index, plan.members, COLLUDE_WAIT_S
    )
    z = plan.alie_z if plan.spec.kind == "alie" else 0.0
    epsilon = plan.spec.value or 0.0

    def transform(update: torch.Tensor, context: UpdateContext) -> torch.Tensor:
        honest = colluders.exchange(context.round_id, update)
        return alie(honest, z) if plan.spec.kind == "alie" else ipm(honest, epsilon)

    return transform


def _generator(plan: AttackPlan, round_id: int) -> torch.Generator:
    """Noise stream of one attacker in one round, a function of the seed only."""
    mixed = ((plan.seed * 1_000_003 + plan.index) * 1_000_003 + round_id) % 2**63
    return torch.Generator().manual_seed(mixed)
