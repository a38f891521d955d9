"""Central client-level DP: DP-FedAvg's Gaussian mechanism, run by the coordinator.

DP-FedAvg (McMahan, Ramage, Talwar and Zhang 2018, "Learning
Differentially Private Recurrent Language Models", Algorithm 1) hides one
client's whole contribution to a round:

    Δ̃ᵢ = Δᵢ · min(1, S / ‖Δᵢ‖₂)               clip each update to norm S
    Σ̃  = Σᵢ Δ̃ᵢ + N(0, (z·S)² I_d)             noise on the SUM
    Δ̄  = Σ̃ / n                               the round's mean, n contributors

Under add/remove-one-client adjacency one client moves Σᵢ Δ̃ᵢ by at most S
(equal weights: a client's claimed sample count must not scale its share,
so the coordinator refuses any `weighting` but `equal`), so the release is
the Gaussian mechanism with noise multiplier z (sigma over the sensitivity).

Where the noise goes: the round engine hands `finish_aggregate` the *mean*
Σᵢ Δ̃ᵢ / n, and we add N(0, (z·S / n)²) per coordinate to it. That is the
same random variable as noising the sum, (Σ + N(0, (zS)²)) / n =
Σ / n + N(0, (zS/n)²), so the accounting of the sum holds exactly. The
denominator is the round's contributor count n, which the coordinator
publishes with every round (RoundClosed.num_updates): like TFF's
`tff.learning.dp_aggregator` (a DP sum inside an unweighted mean) we treat
the count as public. McMahan et al.'s fixed-denominator estimator (divide
by the expected count qW) would also hide n, but with a population that
changes every round there is no fixed count we could justify.

Adaptive clipping (Andrew, Thakkar, McMahan and Ramaswamy 2021,
"Differentially Private Learning with Adaptive Clipping", Algorithm 1):
S tracks the gamma-quantile of the update norms. Each round every contributor
adds bᵢ = 1[‖Δᵢ‖ ≤ S]; the coordinator releases the centred count with
Gaussian noise and moves S geometrically:

    b̃  = (Σᵢ (bᵢ - ½) + N(0, sigma_b²)) / n + ½     (sensitivity ½: §3.1)
    S ← S · exp(-η_C (b̃ - gamma))

The count is a second Gaussian release of the same clients. Its privacy
composes with the sum's as one Gaussian mechanism (the paper's Theorem 1):
1/z² = 1/z_Δ² + 1/(2 sigma_b)². So `noise_multiplier` z stays what the ledger
accounts, and the sum is noised with the larger

    z_Δ = (z⁻² - (2 sigma_b)⁻²)^(-1/2),   defined only for 2 sigma_b > z.

Randomness: the coordinator passes a `torch.Generator` seeded from the OS
each round. torch's Gaussian sampler is not hardened against the
floating-point attacks of Mironov 2012 (Opacus' `secure_mode` is); the
noise hides clients from anyone who sees the released models, under the
trust assumption of central DP (the coordinator sees every clipped update).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import torch

from fedgrpc.errors import ConfigError, check_config
from fedgrpc.privacy.ledger import Neighbouring, Release

ClientSampling = Literal["all", "fixed"]
"""How a round's clients are chosen: `all` connected clients (q = 1), or a
`fixed` number drawn uniformly without replacement (`selection = random`)."""
CLIP_SAFETY = 1.0 - 2.0**-23
"""Scale a clipped update slightly under S: float32 rounding of x·(S/‖x‖)
can land each coordinate 2⁻²⁴ above, so the clipped norm could exceed S
by one ulp; this keeps ‖Δ̃‖ ≤ S, the sensitivity the ledger assumes."""
NORMS_KEPT = 1 << 20
"""Per-update clip outcomes held between rounds (see `finish_aggregate`)."""
BLOCK = 1 << 20
"""Coordinates per step of the norm and the noise (4 MiB of float32): the
float64 norm of a whole 10.5M update converts it at once (116 ms, 84 MB);
by blocks it takes 14 ms, and noise drawn into one cached block and added
costs 67 ms instead of 140 ms (measured on this machine, one thread)."""


def l2_norm(update: torch.Tensor) -> float:
    """‖update‖₂ summed in float64, a block at a time.

    In float32 a 100M-coordinate sum drifts by ~1e-6 relative, which would
    let a clipped update out past S.
    """
    squares = 0.0
    for start in range(0, update.numel(), BLOCK):
        block = update[start : start + BLOCK]
        squares += float(torch.linalg.vector_norm(block, dtype=torch.float64)) ** 2
    return math.sqrt(squares)


@dataclass(frozen=True, slots=True)
class AdaptiveClipping:
    """Andrew et al. 2021's quantile tracking (see the module docstring)."""

    target_quantile: float
    """gamma in (0, 1): the fraction of updates that should end up unclipped."""
    learning_rate: float
    """η_C > 0 of the geometric update (the paper uses 0.2)."""
    count_noise: float
    """sigma_b > 0: standard deviation of the noise on the unclipped count, in
    clients (the paper suggests expected clients per round / 20)."""

    def __post_init__(self) -> None:
        check_config(0 < self.target_quantile < 1, "dp_adaptive_clip_quantile",
                     self.target_quantile, "in (0, 1)")  # fmt: skip
        rate = self.learning_rate
        check_config(math.isfinite(rate) and rate > 0, "dp_clip_learning_rate",
                     rate, "finite > 0")  # fmt: skip
        check_config(math.isfinite(self.count_noise) and self.count_noise > 0,
                     "dp_clip_count_noise", self.count_noise, "finite > 0")  # fmt: skip


def update_noise_multiplier(z: float, adaptive: AdaptiveClipping | None) -> float:
    """z_Δ, the sum's noise multiplier that leaves z for the count (Andrew et al.).

    Raises:
        ConfigError: 2 sigma_b <= z: the count alone would spend more than z allows.
    """
    if adaptive is None:
        return z
    two_sigma_b = 2.0 * adaptive.count_noise
    if two_sigma_b <= z:
        raise ConfigError(
            f"dp_clip_count_noise={adaptive.count_noise:g} is too small for noise "
            f"multiplier z={z:g}: adaptive clipping needs 2 x dp_clip_count_noise "
            "> z (the count's noise shares z's budget: 1/z^2 = 1/z_update^2 + "
            "1/(2 sigma_b)^2); raise dp_clip_count_noise (Andrew et al. suggest "
            "clients per round / 20) or the noise"
        )
    # 1/z² = 1/z_Δ² + 1/(2 sigma_b)²  =>  z_Δ = (z⁻² - (2 sigma_b)⁻²)^(-1/2)
    return float((z**-2 - two_sigma_b**-2) ** -0.5)


class CentralGaussian:
    """`privacy = "central"`: clip at the coordinator, noise the round's sum."""

    name = "central"

    def __init__(
        self,
        clip_norm: float,
        noise_multiplier: float,
        *,
        sampling: ClientSampling = "all",
        adaptive: AdaptiveClipping | None = None,
    ) -> None:
        """S = `clip_norm`, accounted multiplier z = `noise_multiplier`.

        Raises:
            ConfigError: a non-positive S or z, or an adaptive count noise
                too small for z (`update_noise_multiplier`).
        """
        check_config(math.isfinite(clip_norm) and clip_norm > 0, "dp_clip_norm",
                     clip_norm, "finite > 0")  # fmt: skip
        check_config(math.isfinite(noise_multiplier) and noise_multiplier > 0,
                     "dp_noise_multiplier", noise_multiplier, "finite > 0")  # fmt: skip
        check_config(sampling in ("all", "fixed"), "sampling", sampling,
                     "'all' or 'fixed'")  # fmt: skip
        self.clip_norm = float(clip_norm)
        """S now (moves each round under adaptive clipping)."""
        self.noise_multiplier = float(noise_multiplier)
        """z: what the ledger accounts (sum and count together)."""
        self.update_noise_multiplier = update_noise_multiplier(
            self.noise_multiplier, adaptive
        )
        """z_Δ >= z: what the sum is noised with."""
        self.sampling: ClientSampling = sampling
        self.adaptive = adaptive
        self._unclipped: deque[bool] = deque(maxlen=NORMS_KEPT)

    @property
    def neighbouring(self) -> Neighbouring:
        """The adjacency the releases are accounted under.

        `fixed` sampling is amplified only under replace-one (Wang, Balle and
        Kasiviswanathan 2019, Theorem 27; dp-accounting refuses it under
        add/remove), where one client moves the sum by up to 2S.
        """
        return "replace_one" if self.sampling == "fixed" else "add_or_remove_one"

    def clip_update(self, update: torch.Tensor) -> float:
        """Scale `update` in place to L2 norm <= S; return its norm before."""
        norm = l2_norm(update)
        unclipped = norm <= self.clip_norm
        if not unclipped:
            update.mul_(self.clip_norm / norm * CLIP_SAFETY)
        self._unclipped.append(unclipped)
        return norm

    def finish_aggregate(
        self, aggregate: torch.Tensor, contributors: int, generator: torch.Generator
    ) -> None:
        """Add N(0, (z_Δ·S / n)²) to the mean (the sum's noise, divided by n).

        Under adaptive clipping, then release the noised unclipped fraction
        and move S. The clip outcomes used are the last `contributors`
        recorded: every committed update of a round is clipped once, in
        order, before the round closes, so those are exactly this round's
        (outcomes of rounds that were skipped lie before them, and go).
        """
        check_config(contributors >= 1, "contributors", contributors, ">= 1")
        std = self.update_noise_multiplier * self.clip_norm / contributors
        noise = torch.empty(min(BLOCK, aggregate.numel()), dtype=aggregate.dtype)
        for start in range(0, aggregate.numel(), BLOCK):
            part = aggregate[start : start + BLOCK]
            part.add_(noise[: part.numel()].normal_(0.0, std, generator=generator))
        outcomes = list(self._unclipped)[-contributors:]
        self._unclipped.clear()
        if self.adaptive is not None:
            self._adapt(sum(outcomes), contributors, generator)

    def _adapt(
        self, unclipped: int, contributors: int, generator: torch.Generator
    ) -> None:
        """S ← S · exp(-η_C (b̃ - gamma)), b̃ the noised unclipped fraction."""
        adaptive = self.adaptive
        assert adaptive is not None
        draw = torch.empty(1, dtype=torch.float64).normal_(
            0.0, 1.0, generator=generator
        )
        noise = float(draw) * adaptive.count_noise
        # Centred count Σ(bᵢ - ½): sensitivity ½, so sigma_b accounts as 2 sigma_b.
        centred = unclipped - contributors / 2.0
        fraction = (centred + noise) / contributors + 0.5
        step = -adaptive.learning_rate * (fraction - adaptive.target_quantile)
        self.clip_norm *= math.exp(step)

    def round_release(self, contributors: int, population: int) -> Release | None:
        """The Gaussian release of a round of `contributors` among `population`.

        `all`: q = 1, multiplier z (add/remove). `fixed`: `contributors`
        clients sampled without replacement from `population`, multiplier
        z / 2 because the sensitivity under replace-one is 2S.
        """
        if self.sampling == "all" or population <= 0:
            if self.sampling == "fixed":  # replace-one, nothing to amplify with
                return Release(self.noise_multiplier / 2)
            return Release(self.noise_multiplier)
        size = max(1, min(contributors, population))
        return Release(
            self.noise_multiplier / 2,
            size / population,
            sampling="fixed",
            population=population,
            sample_size=size,
        )

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: S, if adaptive clipping moves it ({} if not)."""
        return {"clip_norm": self.clip_norm} if self.adaptive is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore an adaptive S from `state_dict`.

        A fixed S comes from the config: an operator who changed
        dp_clip_norm between restarts gets the new one.
        """
        if self.adaptive is None or "clip_norm" not in state:
            return
        clip = float(state["clip_norm"])
        check_config(math.isfinite(clip) and clip > 0, "clip_norm", clip, "> 0")
        self.clip_norm = clip
