"""Client-level DP under secure aggregation: the `distributed` Privacy stage.

DP-FedAvg (McMahan et al. 2018) with the noise added *by the clients*, in
the secure-aggregation ring, before masking: the distributed discrete
Gaussian of Kairouz, Liu and Steinke 2021 (the math, its sources and why not
Skellam: `privacy.discrete`). Per round:

1. the coordinator plans the round (`DistributedGaussian.plan_round`): the
   code step gamma, the rounding bound Δ₂, each client's noise sigma_c in code
   units and the ring width that holds codes plus noise, and announces
   them in SecAggRoundSetup (signed with the rest of the setup);
2. each client clips its update to L2 norm S, rounds it conditionally and
   adds its N_Z(0, sigma_c²) share to the integer codes before masking
   (`encode_noisy_share`);
3. the coordinator unmasks only the noised sum: the dequantised sum *is*
   the private release, so `finish_aggregate` adds nothing;
4. `round_release` reports the Gaussian-equivalent release (z_eff) of the
   survivors whose noise is in the sum, for the ledger.

Trust model: the coordinator is honest-but-curious (it runs the protocol,
and tries to learn from what it sees); clients are honest about noise: each
clips its own update and adds its own share. The coordinator *cannot* check
either inside the masks: a client that skips its noise or its clip is not
detected, and lowers the privacy of everyone's sum (by 1/n of the noise
variance each). Clients colluding with the coordinator can subtract their
own shares: ε holds against a coordinator that colludes with no client.

Dropouts: sigma_c is sized so that `min_survivors` shares already give the
configured z (sigma_c = z Δ₂ / √n_min); a masked round whose survivors are
fewer is aborted *before* unmasking (`refuse_unmask`), so no sum with
less noise than promised is ever seen, and each release is accounted with
the survivors actually in the sum (more survivors, more noise, less ε).

Neighbouring: one client's update replaced by zeros, the client still
taking part (its noise share stays in the sum; who takes part is public
to the coordinator). The sum then moves by at most Δ₂, the sensitivity
[KLS21] Prop. 14 takes, i.e. the ledger's `add_or_remove_one` Gaussian
with sensitivity 1 in units of Δ₂.

Sampling amplification is never claimed (q = 1): the participants of a
masked round are known to the coordinator (it chose them), so the secret
sampling that amplification needs does not hold against this adversary.
With the `rdp` accountant the mapping to a Gaussian is then exact (the zCDP
bound *is* the Gaussian's RDP curve); `pld` would compute the Gaussian's
privacy-loss distribution, which a mechanism sharing only its zCDP is not
proven to have, so the config refuses `pld` with `distributed`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedgrpc.config.coordinator import CoordinatorConfig
from fedgrpc.errors import ConfigError, check_config
from fedgrpc.log import get_logger
from fedgrpc.privacy.discrete import (
    client_std_for,
    clip_l2,
    conditional_round,
    discrete_noise_multiplier,
    ring_bits_for_noise,
    rounded_l2_bound,
    sample_discrete_gaussian,
)
from fedgrpc.privacy.ledger import Release, noise_for_budget

log = get_logger(__name__)

SECURE_ROUND_MIN_CLIENTS = 3
"""The fewest participants a masked round starts with (`secagg.graph`):
the default floor of `dp_min_survivors`."""


@dataclass(frozen=True, slots=True)
class NoisePlan:
    """One masked round's DP parameters (what SecAggRoundSetup announces).

    Value units are the model's; code units are multiples of `step`.
    """

    clip_norm: float
    """S: every client's update is clipped to this L2 norm (value units)."""
    step: float
    """gamma: the value of one code (the round's fixed-point scale)."""
    dimension: int
    """d: values each client sends (the round's positions)."""
    norm_bound: float
    """Δ₂: L2 norm of a client's codes after conditional rounding (code units)."""
    client_std: float
    """sigma_c: each client's discrete Gaussian share (code units)."""
    min_survivors: int
    """Shares that already give the configured noise multiplier."""
    ring_bits: int
    """M: the ring in which the participants' codes plus noise never wrap."""

    def noise_multiplier(self, survivors: int) -> float:
        """z_eff of a sum holding `survivors` shares (`discrete_noise_multiplier`)."""
        return discrete_noise_multiplier(
            self.norm_bound, self.dimension, self.client_std, survivors
        )

    def release(self, survivors: int) -> Release:
        """The Gaussian release with the sum's zCDP (q = 1: module docstring)."""
        return Release(self.noise_multiplier(survivors))


@dataclass(frozen=True, slots=True)
class NoisyShare:
    """One client's clipped, rounded codes and its noise share (int64 each)."""

    codes: np.ndarray
    """Clipped and conditionally rounded codes, |code| <= qmax (what e lost)."""
    noise: np.ndarray
    """N_Z(0, sigma_c²) per code: what the client adds before masking."""
    clipped: int
    """Values beyond the per-coordinate clip C (after the L2 clip)."""
    norm: float
    """L2 norm of the update before the L2 clip."""


def encode_noisy_share(
    x: np.ndarray,
    *,
    clip_norm: float,
    step: float,
    qmax: int,
    norm_bound: float,
    client_std: float,
    rng: np.random.Generator,
) -> NoisyShare:
    """Clip to L2 norm S, quantise with conditional rounding, draw the noise share.

    Order as in [KLS21] Algorithm 1 (without the random rotation: the ring
    is widened to hold the noise instead of wrapping modulo a small one):
    x ← x · min(1, S/‖x‖); y ← clip(x, ±C)/gamma with C = qmax·gamma (the per-value
    clip of the fixed-point format, which only shrinks the norm);
    codes ← conditional rounding of y to ‖codes‖₂ <= Δ₂; noise ~ N_Z(0, sigma_c²)^d.
    """
    y = np.array(x, dtype=np.float64)  # a copy: the caller's e is not touched
    norm = clip_l2(y, clip_norm)
    limit = qmax * step
    clipped = int(np.count_nonzero(np.abs(y) > limit))
    np.clip(y, -limit, limit, out=y)
    y /= step
    codes = conditional_round(y, norm_bound, rng)
    np.clip(codes, -qmax, qmax, out=codes)  # y may sit a float hair above qmax
    noise = sample_discrete_gaussian(client_std, codes.size, rng)
    return NoisyShare(codes, noise, clipped, norm)


def noised_sum(
    updates: np.ndarray, plan: NoisePlan, qmax: int, rng: np.random.Generator
) -> np.ndarray:
    """The dequantised sum n clients' noisy shares give, computed in one process.

    What a masked round of `updates` (n x d, float) unmasks: masks cancel
    exactly in the ring, so the sum of the clients' codes plus noise is the
    same as here. For simulations and benches of many clients (central vs
    distributed noise at the same ε) without n real secure clients.
    """
    total = np.zeros(updates.shape[1], dtype=np.int64)
    for row in updates:  # one client at a time: each clips and rounds its own
        share = encode_noisy_share(
            row, clip_norm=plan.clip_norm, step=plan.step, qmax=qmax,
            norm_bound=plan.norm_bound, client_std=plan.client_std, rng=rng,
        )  # fmt: skip
        total += share.codes
        total += share.noise
    return total.astype(np.float64) * plan.step


class DistributedGaussian:
    """`privacy = "distributed"`: the `PrivacyStage` of noise added in the ring.

    Stateful only between a round's unmasking and its release: the secure
    round mode calls `unmasked` when it recovered a noised sum, and the
    engine's `round_release` takes that release (once).
    """

    name = "distributed"

    def __init__(
        self,
        clip_norm: float,
        noise_multiplier: float,
        *,
        min_survivors: int,
        rounding_beta: float,
    ) -> None:
        """S, z (the Gaussian multiplier the sum must reach), n_min and β.

        Raises:
            ConfigError: a value out of range.
        """
        check_config(math.isfinite(clip_norm) and clip_norm > 0, "dp_clip_norm",
                     clip_norm, "finite > 0")  # fmt: skip
        check_config(math.isfinite(noise_multiplier) and noise_multiplier > 0,
                     "dp_noise_multiplier", noise_multiplier, "finite > 0")  # fmt: skip
        check_config(min_survivors >= SECURE_ROUND_MIN_CLIENTS, "dp_min_survivors",
                     min_survivors, f">= {SECURE_ROUND_MIN_CLIENTS}")  # fmt: skip
        check_config(0 <= rounding_beta < 1, "dp_rounding_beta", rounding_beta,
                     "in [0, 1)")  # fmt: skip
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.min_survivors = min_survivors
        self.rounding_beta = rounding_beta
        self._pending: Release | None = None
        self.budget: Callable[[Release], str | None] | None = None
        """Set by the engine's privacy wiring (it owns the ledger): asked
        before each unmasking with the release it would make, returns why to
        refuse it (`max_epsilon` would be exceeded) or None. Under distributed
        DP the sum is released when it is *unmasked*, so the budget must be
        enforced then, not when the round is applied. Unset: not enforced here."""

    def plan_round(
        self, *, dimension: int, step: float, value_bits: int, participants: int
    ) -> NoisePlan:
        """The DP parameters of a masked round of `participants` clients.

        Raises:
            ConfigError: the noise does not fit a 64-bit ring.
        """
        bound = rounded_l2_bound(self.clip_norm / step, dimension, self.rounding_beta)
        std = client_std_for(
            self.noise_multiplier, bound, dimension, self.min_survivors
        )
        bits = ring_bits_for_noise(value_bits, participants, std, dimension)
        return NoisePlan(self.clip_norm, step, dimension, bound, std,
                         self.min_survivors, bits)  # fmt: skip

    def refuse_unmask(self, plan: NoisePlan, survivors: int) -> str | None:
        """Why a sum of `survivors` shares must stay masked (None: unmask it).

        Too few shares for the promised noise, or a release the run's budget
        refuses (`budget`).
        """
        if survivors < self.min_survivors:
            return (
                f"only {survivors} clients' masked updates arrived but the noise "
                f"of dp_min_survivors = {self.min_survivors} is needed for the "
                "promised privacy; the sum was not unmasked"
            )
        if self.budget is None:
            return None
        return self.budget(plan.release(survivors))

    def unmasked(self, plan: NoisePlan, survivors: int) -> Release:
        """A noised sum of `survivors` shares was recovered: its release is pending."""
        release = plan.release(survivors)
        self._pending = release
        log.info("dp_distributed_release", survivors=survivors,
                 noise_multiplier=release.noise_multiplier)  # fmt: skip
        return release

    # -- PrivacyStage -----------------------------------------------------------------

    def clip_update(self, update: torch.Tensor) -> float:
        """Clip `update` in place to L2 norm S; return its norm before.

        The coordinator never calls this under secure aggregation (it sees
        no single update): the clients clip (`encode_noisy_share`).
        """
        norm = float(torch.linalg.vector_norm(update))
        if norm > self.clip_norm:
            update.mul_(self.clip_norm / norm)
        return norm

    def finish_aggregate(
        self, aggregate: torch.Tensor, contributors: int, generator: torch.Generator
    ) -> None:
        """Nothing to add: the clients' noise shares are already in the sum."""

    def round_release(self, contributors: int, population: int) -> Release | None:
        """The release of the sum unmasked this round, taken once (None: none was).

        Uses the survivors counted at unmasking (whose noise is in the sum),
        not `contributors`; `population` is unused (q = 1, module docstring).
        """
        release, self._pending = self._pending, None
        return release


def build_distributed_stage(
    config: CoordinatorConfig, noise_multiplier: float | None = None
) -> DistributedGaussian:
    """The stage `privacy = "distributed"` asks for.

    `noise_multiplier`: z if the caller calibrated it already; else
    `dp_noise_multiplier`, or z calibrated by `dp-accounting` so that
    `max_rounds` releases at `dp_min_survivors` spend `dp_target_epsilon`.

    Raises:
        ConfigError: settings that cannot work (e.g. even the fewest
            survivors' noise needs a ring over 64 bits).
    """
    z = noise_multiplier or config.dp_noise_multiplier
    if z <= 0:
        check_config(config.max_rounds > 0, "max_rounds", config.max_rounds,
                     "> 0 to calibrate noise for dp_target_epsilon")  # fmt: skip
        z = noise_for_budget(
            config.dp_target_epsilon, config.dp_delta,
            Release(1.0, count=config.max_rounds), config.dp_accountant,
        )  # fmt: skip
    floor = max(SECURE_ROUND_MIN_CLIENTS, config.min_clients)
    stage = DistributedGaussian(
        config.dp_clip_norm, z,
        min_survivors=config.dp_min_survivors or floor,
        rounding_beta=config.dp_rounding_beta,
    )  # fmt: skip
    _check_ring_reachable(config, stage)
    return stage


def _check_ring_reachable(
    config: CoordinatorConfig, stage: DistributedGaussian
) -> None:
    """Refuse at start noise no 64-bit ring holds, even at its smallest (d = 1)."""
    value_bits = 4 if config.codec_config.values == "int4" else 8
    step = config.secagg_clip / ((1 << (value_bits - 1)) - 1)
    try:
        stage.plan_round(dimension=1, step=step, value_bits=value_bits,
                         participants=stage.min_survivors)  # fmt: skip
    except ConfigError as exc:
        raise ConfigError(
            f"privacy = 'distributed' with dp_clip_norm = {config.dp_clip_norm:g}, "
            f"noise multiplier {stage.noise_multiplier:.4g} and secagg_clip = "
            f"{config.secagg_clip:g} cannot work: {exc}"
        ) from exc
