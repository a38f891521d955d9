"""Choosing the one clip per round that every client quantises with under masks.

`fixed_point.FixedPointScale` is the format (clip C, b bits, stochastic
rounding, clip counts); this module is the coordinator's rule for C, round
after round (DESIGN.md step 3). The coordinator never sees one client's
values, only the unmasked sum and the clip counts the clients report, so
those are the rule's only inputs:

- round 0: C = H · lr_inner. Adam moves a weight by about lr per step at
  most, so after H inner steps no pseudo-gradient coordinate exceeds ~H·lr
  (error feedback may carry more; that is what the clip count catches).
- later rounds: if more than `target_clipped` of the values were clipped,
  C ← growth · C (values beyond C were cut and wait in the residuals);
  otherwise C ← headroom · max|mean| of the round's aggregate, kept within
  [C / growth, C · growth] so one quiet or loud round cannot swing it far,
  and never above `max_clip` (H · lr in the bench: see `ClipRule.max_clip`).

A larger C costs resolution (one code step is C / qmax, and stochastic
rounding keeps that unbiased); a smaller C costs clipping, which error
feedback repays later. Both errors stay in the clients' residuals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedgrpc.errors import check_config
from fedgrpc.secagg.fixed_point import FixedPointScale


@dataclass(frozen=True, slots=True, kw_only=True)
class ClipRule:
    """How the announced clip follows the aggregate (see the module docstring)."""

    target_clipped: float = 0.01
    """Fraction of quantised values allowed to clip before C grows (1 %:
    the tail of a heavy-tailed update, not its body)."""
    growth: float = 2.0
    """Largest factor C may change by in one round."""
    headroom: float = 2.0
    """C over max|mean|: clients disagree, so one client's values exceed the
    mean's; the clip counts correct a headroom that proves too small."""
    max_clip: float | None = None
    """Ceiling on C (None: none); H · lr_inner is the natural one. Values
    beyond it are stale residual, not one round's training: clipping drains
    them at most C per round instead of in one burst, and stops the clip
    count from doubling C round after round when clients' residuals keep
    growing where they disagree (quantisation noise grows with C)."""

    def __post_init__(self) -> None:
        check_config(
            0 <= self.target_clipped < 1,
            "target_clipped",
            self.target_clipped,
            "in [0, 1)",
        )
        check_config(self.growth > 1, "growth", self.growth, "> 1")
        check_config(self.headroom > 0, "headroom", self.headroom, "> 0")
        check_config(
            self.max_clip is None
            or (math.isfinite(self.max_clip) and self.max_clip > 0),
            "max_clip",
            self.max_clip,
            "None or finite > 0",
        )


def initial_round_scale(
    inner_steps: int, inner_lr: float, value_bits: int = 8
) -> FixedPointScale:
    """Round 0's format: clip H · lr (Adam's bound on H steps' drift).

    Raises:
        ConfigError: H < 1 or lr not finite and > 0.
    """
    check_config(inner_steps >= 1, "inner_steps", inner_steps, ">= 1")
    check_config(
        math.isfinite(inner_lr) and inner_lr > 0, "inner_lr", inner_lr, "finite > 0"
    )
    return FixedPointScale(clip=inner_steps * inner_lr, value_bits=value_bits)


def next_round_scale(
    current: FixedPointScale,
    *,
    clipped: int,
    quantised: int,
    aggregate_abs_max: float,
    rule: ClipRule = ClipRule(),
) -> FixedPointScale:
    """The next round's format from this round's clip counts and aggregate.

    Args:
        current: the format this round used.
        clipped: values clipped, summed over the clients' reports.
        quantised: values quantised, summed over those clients (k · n).
        aggregate_abs_max: max |mean| of the unmasked aggregate (float).
        rule: the constants.

    Returns:
        Same `value_bits`, new clip. A non-finite or zero aggregate (nothing
        sent) keeps the current clip, so the format stays valid.
    """
    clip = current.clip
    if quantised > 0 and clipped > rule.target_clipped * quantised:
        clip *= rule.growth
    elif math.isfinite(aggregate_abs_max) and aggregate_abs_max > 0:
        wanted = rule.headroom * aggregate_abs_max
        clip = min(max(wanted, clip / rule.growth), clip * rule.growth)
    if rule.max_clip is not None:
        clip = min(clip, rule.max_clip)
    return FixedPointScale(clip=clip, value_bits=current.value_bits)
