"""Secure aggregation's settings (SecAgg+), the `secagg_*` keys of `[coordinator]`.

One section of `CoordinatorConfig`, apart by job: the masking protocol
(threshold, neighbour graph, the codes' clip) and the shared sparse index
set (density, random share, ranking rule). Its checks need three settings
of other sections, which `CoordinatorConfig` passes in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fedgrpc.domain.codecs import CodecConfig, Dense
from fedgrpc.errors import check_config as _check

SECAGG_VALUES = ("int8", "int4")
"""Dense value formats whose codes the secure-aggregation ring sums exactly."""
SECAGG_MIN_CLIENTS = 3
INDEX_RULES = ("momentum", "chunk_norm", "residual_age")
"""`secagg_index_rule` values (`coordinator.secure.index_planner`)."""


@dataclass(frozen=True, kw_only=True)
class SecureAggregationSettings:
    """Whether rounds are masked, how, and which coordinates a sparse round masks."""

    secure_aggregation: bool = False
    """SecAgg+ masking: the coordinator learns each round's sum, never one
    client's update. Needs `codec` dense:int8 or dense:int4 (summable in the
    ring) and min_clients >= 3. Excludes robust aggregation (median, trimmed
    mean need each update; the sum only gives the mean, the one aggregator
    implemented: add a refusal here with any other). Costs key exchange and
    unmasking per round."""
    secagg_threshold: float | None = None
    """Shamir threshold t: a count (>= 2), or a fraction in (0, 1) of each
    client's neighbourhood (rounded up). None applies the graph rule
    (`secagg.graph`: floor((n + ceil(0.05 n)) / 2) + 1 for n <= 100), which
    is fork-safe against 5 % colluding clients. Raised to that rule's lower
    bound floor((k + 1) / 2) + 1 if set below it (a smaller t is insecure)."""
    secagg_degree: int | None = None
    """Neighbours per client, k. None applies the graph rule: complete graph up
    to 100 participants, a random Harary graph of degree O(log n) above."""
    secagg_clip: float = 0.05
    """Round-wide clip C of secure-aggregation codes: clients clip coordinates
    of their (residual + pseudo-gradient) to [-C, C] and quantise with step
    C / (2^(b-1) - 1); the clipped remainder stays in their residual. 0.05
    fits DiLoCo pseudo-gradients at inner lr ~1e-3 .. 1e-2."""
    secagg_density: float = 1.0
    """Fraction (0, 1] of coordinates masked per secure round: 1 = all (dense,
    the safe default); below 1 a shared set of ceil(density x d) positions,
    with a divergence guard falling back to dense (`coordinator.secure_index`)."""
    secagg_random_fraction: float = 0.1
    """Share epsilon in [0, 1] of that set drawn from the round nonce, so every
    coordinate can flush its residual (0.1: bench/convergence.py's runs)."""
    secagg_index_rule: Literal["momentum", "chunk_norm", "residual_age"] = "momentum"
    """How that set is ranked: "momentum" (top |outer momentum|),
    "chunk_norm" (whole chunks of largest summed client residual RMS, which
    each client appends to its masked push: `compress.chunk_norms`) or
    "residual_age" (last-seen |mean| per round waited x rounds since sent,
    so the set rotates: `compress.residual_age`)."""
    secagg_index_chunk: int = 64
    """C, coordinates per chunk of the "chunk_norm" rule: a push carries
    ceil(d / C) more values (d / 64 = 1.6 % of d)."""

    def _check_secure_aggregation(
        self, codec: tuple[str, CodecConfig], min_clients: int, privacy: str
    ) -> None:
        """Masked sums need integer codes with one scale, and only give a mean.

        `codec` is the coordinator's `codec` as written and parsed;
        `min_clients` and `privacy` its settings of those names.
        """
        spec, parsed = codec
        threshold, degree = self.secagg_threshold, self.secagg_degree
        _check(threshold is None or 0 < threshold < 1 or (threshold >= 2
               and float(threshold).is_integer()), "secagg_threshold", threshold,
               "a fraction in (0, 1) or a whole count >= 2")  # fmt: skip
        _check(degree is None or degree >= 2, "secagg_degree", degree, ">= 2")
        _check(math.isfinite(self.secagg_clip) and self.secagg_clip > 0,
               "secagg_clip", self.secagg_clip, "finite > 0")  # fmt: skip
        _check(0 < self.secagg_density <= 1, "secagg_density", self.secagg_density,
               "a fraction in (0, 1] (1: mask every coordinate)")  # fmt: skip
        _check(0 <= self.secagg_random_fraction <= 1, "secagg_random_fraction",
               self.secagg_random_fraction, "a fraction in [0, 1]")  # fmt: skip
        _check(self.secagg_index_rule in INDEX_RULES,
               "secagg_index_rule", self.secagg_index_rule,
               '"momentum", "chunk_norm" or "residual_age"')  # fmt: skip
        _check(self.secagg_index_chunk >= 1, "secagg_index_chunk",
               self.secagg_index_chunk, ">= 1")  # fmt: skip
        _check(self.secagg_index_rule != "chunk_norm" or privacy != "distributed",
               "secagg_index_rule", self.secagg_index_rule, '"momentum" or '
               '"residual_age" with privacy = distributed (the chunk norms '
               "would need noise too)",
               )  # fmt: skip
        if not self.secure_aggregation:
            return
        _check(isinstance(parsed, Dense) and parsed.values in SECAGG_VALUES, "codec",
               spec, "dense:int8 or dense:int4 with secure_aggregation: the "
               "masked ring only sums integer codes of one round-wide scale "
               "(float values and top-k supports cannot be summed under masks)",
               )  # fmt: skip
        _check(min_clients >= SECAGG_MIN_CLIENTS, "min_clients",
               min_clients, f">= {SECAGG_MIN_CLIENTS} with secure_aggregation "
               "(with two, the sum minus one's own update is the other's)",
               )  # fmt: skip
