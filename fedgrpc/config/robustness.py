"""How a round's updates are weighted, combined and guarded (a config section).

A mixin rather than a nested table so TOML keys and `--flags` stay flat
(`aggregator = "median"`, `--aggregator median`); `CoordinatorConfig`
inherits it and calls `_check_robustness` from its `__post_init__`. Not
slotted: slotted dataclasses cannot be combined as several bases.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from fedgrpc.errors import check_config as _check

WEIGHTINGS = ("capped", "samples", "equal")
"""`weighting` values; the first is the default."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustSettings:
    """The trust stage's settings (`config.robustness`: trust_*)."""

    decay: float = 0.6
    soft_threshold: float = 0.5
    hard_threshold: float = 0.2
    quarantine_rounds: int = 5

    def __post_init__(self) -> None:
        """Refuse settings under which the state machine makes no sense.

        Raises:
            ConfigError: naming the trust_* setting.
        """
        decay, soft, hard = self.decay, self.soft_threshold, self.hard_threshold
        _check(math.isfinite(decay) and 0 <= decay < 1, "trust_decay", decay,
               "0 <= decay < 1")  # fmt: skip
        _check(math.isfinite(soft) and 0 < soft <= 1, "trust_soft_threshold", soft,
               "0 < threshold <= 1")  # fmt: skip
        _check(math.isfinite(hard) and 0 <= hard < soft, "trust_hard_threshold",
               hard, f"0 <= threshold < trust_soft_threshold ({soft:g})")  # fmt: skip
        _check(self.quarantine_rounds >= 1, "trust_quarantine_rounds",
               self.quarantine_rounds, ">= 1")  # fmt: skip

    @property
    def probation_score(self) -> float:
        """Where a readmitted client restarts: halfway between the thresholds."""
        return (self.soft_threshold + self.hard_threshold) / 2


AGGREGATOR_NAMES = (
    "mean", "median", "trimmed_mean", "krum", "multi_krum", "geometric_median",
    "centered_clipping", "hybrid",
)  # fmt: skip
"""Built-in aggregators (`coordinator.strategy.plugins.BUILTIN_AGGREGATORS`)."""
_RULE_SETTINGS = {
    "krum_f": ("krum", "multi_krum"),
    "multi_krum_m": ("multi_krum",),
    "geomedian_iters": ("geometric_median",),
    "geomedian_eps": ("geometric_median",),
    "clipping_tau": ("centered_clipping",),
    "clipping_iters": ("centered_clipping",),
}
"""Settings that only mean something with some aggregators."""
_INT_SETTINGS = {"krum_f": 0, "multi_krum_m": 1, "geomedian_iters": 1,
                 "clipping_iters": 1}  # fmt: skip
"""Integer settings and their least value."""


@dataclass(frozen=True, kw_only=True)
class RobustnessSettings:
    """The aggregator stage and the divergence guard; see `CoordinatorConfig`."""

    aggregator: str = "mean"
    """How a round's updates become one: `mean` (FedAvg, weighted by `weighting`),
    `median` (coordinate-wise), `trimmed_mean` (drops `trimmed_mean_beta` of
    each side per coordinate), `krum`, `multi_krum`, `geometric_median`,
    `centered_clipping`, `hybrid` (norm bound, then trimmed mean) or
    `package.module:Class`. The robust rules need every update, so they spool
    them to `spool_dir` (not with secure_aggregation: bound updates on the
    clients instead, `ClientConfig.max_update_norm`)."""
    aggregator_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of a `module:Class` aggregator's constructor."""
    trimmed_mean_beta: float | None = None
    """Fraction in [0, 0.5) trimmed from each side; None means 0.1. Only with
    aggregator = trimmed_mean or hybrid."""
    krum_f: int | None = None
    """Krum's f, the Byzantine updates assumed (2f + 2 < n); None means the
    most a round's n allows. Only with aggregator = krum or multi_krum."""
    multi_krum_m: int | None = None
    """Updates Multi-Krum averages; None means n - f. Only with multi_krum."""
    geomedian_iters: int | None = None
    """At most this many Weiszfeld steps (>= 1); None means 10. Only with
    aggregator = geometric_median."""
    geomedian_eps: float | None = None
    """Weiszfeld's smoothing nu > 0 (distances below it count as nu); None
    means 1e-6. Only with geometric_median."""
    clipping_tau: float | None = None
    """Centered clipping's radius tau > 0; None means, at each step, the
    median distance of the updates to the current centre (adaptive). Only
    with centered_clipping."""
    clipping_iters: int | None = None
    """Centered clipping's L, passes per round (>= 1); None means 3. Only
    with centered_clipping."""
    norm_bound: float | None = None
    """Clip every update to this L2 norm before the aggregator runs (any
    aggregator; the spool is then used); None: off, or for hybrid the median
    norm. Exclusive with norm_bound_multiple."""
    norm_bound_multiple: float | None = None
    """Clip every update to this multiple of the round's median update norm
    (> 0); None: off (hybrid: 1.0). Exclusive with norm_bound."""
    accumulator: str = "auto"
    """`auto` (the streaming sum, or the spool when the aggregator needs every
    update), `streaming_sum` or `spool`."""
    spool_dir: str = ""
    """Where spooled updates live (one file per update, deleted after the
    round); "" means <tmp>/fedgrpc-spool-<uid>. Needs d x 4 bytes per update."""
    weighting: str = "capped"
    """How an update's `num_samples` claim weights it in the mean (the claim is
    unverifiable: any client can send any number):

    - `samples`: weight = n, the claim as sent (FedAvg; trusts every client).
    - `equal`: weight = 1; every update counts the same, whatever it claims.
    - `capped` (default): weight = min(n, max_sample_weight_ratio x m), m the
      lower median of the claims committed in the last round that had any;
      weight = 1 (equal) before any round has. Honest clients of similar
      size keep today's sample weights; one liar gets at most ratio x a
      typical client's weight instead of 100 % of the model.

    Every weight is then multiplied by the client's `weight_factor` (soft
    quarantine). Masked (secure) rounds always weigh updates equally."""
    max_samples_per_update: int = 1_000_000_000
    """Largest `num_samples` an update may claim; more is refused
    (INVALID_ARGUMENT). 10^9 is far above any client's samples (or tokens)
    per round yet keeps every sum of claims far from 2^63. Must be >= 1."""
    max_sample_weight_ratio: float = 2.0
    """`weighting = capped`: an update weighs at most this many times the
    last round's median claim. 2 lets honest clients differ 2x in size with
    exact FedAvg weights while a liar's share among k honest peers stays
    <= 2 / (k + 2). Must be >= 1."""
    max_update_norm_growth: float = 10.0
    """Divergence guard: skip a round whose mean update norm exceeds this many
    times the median of the norms applied in the last 8 rounds (after 3
    such rounds; older or tripped rounds age out); 0 disables."""
    guard_norm_floor: float = 0.001
    """Divergence guard: the median it compares with is at least this
    fraction of the global weights' norm, so rounds of near-zero updates
    (one client pushing zeros) cannot drive the limit to ~0. With
    max_update_norm_growth = 10 the guard never trips a round moving the
    weights by under 1 % of their norm. 0: no floor."""
    trust: str = "off"
    """`on` scores each client by how its updates agree with the others'
    (distance to the aggregate, cosine with the other updates) and
    quarantines the ones that keep disagreeing (see README, "Trust scores").
    Needs every update, so it spools them (accumulator `auto` or `spool`);
    not with secure_aggregation."""
    trust_decay: float = 0.6
    """Weight of a client's past in its score, in [0, 1): s <- decay x s +
    (1 - decay) x round score. 0.6 quarantines a client that disagrees every
    round after its 4th update."""
    trust_soft_threshold: float = 0.5
    """Below this score a client is soft-quarantined: its aggregation weight is
    multiplied by score / threshold. In (0, 1]."""
    trust_hard_threshold: float = 0.2
    """Below this score a client is excluded for trust_quarantine_rounds rounds
    (twice as long for each repeat). In [0, trust_soft_threshold)."""
    trust_quarantine_rounds: int = 5
    """K: rounds a first hard quarantine lasts, and scored rounds of probation
    after readmission."""
    staging_memory_mb: int = 1024
    """RAM for updates still streaming into a summed round: each stays apart
    (d x 4 bytes dense, its indices and values top-k) until it commits, so a
    broken one costs the round nothing. Past this, dense ones are staged on
    disk in spool_dir. 0 stages every one on disk."""
    outer_state_on_disk: bool = False
    """Keep the outer optimizer's state (Nesterov's momentum; the adaptive
    family's two moments) in a file in spool_dir between rounds, stepped
    4 MiB at a time: one model-sized buffer less in RAM (two for fedadam),
    for writing and reading it once per round. Built-in optimizers only."""
    max_broken_uploads: int = 3
    """A client whose uploads break (cut, refused mid-stream, no commit) this
    many times within `broken_upload_window_rounds` rounds is excluded for
    `exclusion_rounds` rounds; 0 never excludes."""
    broken_upload_window_rounds: int = 10
    """The rounds over which broken uploads are counted."""
    exclusion_rounds: int = 5
    """Rounds a repeat breaker sits out (its pushes are refused with
    FAILED_PRECONDITION and no round waits for it)."""

    def _check_robustness(self) -> None:
        """Names only; `RoundStages` loads plugins and checks combinations at start."""
        agg, beta = self.aggregator, self.trimmed_mean_beta
        _check(agg in AGGREGATOR_NAMES or ":" in agg, "aggregator", agg,
               f"{', '.join(AGGREGATOR_NAMES)} or package.module:Class")  # fmt: skip
        _check(beta is None or agg in ("trimmed_mean", "hybrid"),
               "trimmed_mean_beta", beta,
               "unset unless aggregator = 'trimmed_mean' or 'hybrid'")  # fmt: skip
        self._check_rule_settings()
        _check(self.accumulator in ("auto", "streaming_sum", "spool"), "accumulator",
               self.accumulator, "auto, streaming_sum or spool")  # fmt: skip
        _check(self.max_update_norm_growth >= 0, "max_update_norm_growth",
               self.max_update_norm_growth, ">= 0 (0 disables the guard)")  # fmt: skip
        _check(self.weighting in WEIGHTINGS, "weighting", self.weighting,
               ", ".join(WEIGHTINGS))  # fmt: skip
        _check(self.max_samples_per_update >= 1, "max_samples_per_update",
               self.max_samples_per_update, ">= 1")  # fmt: skip
        _check(self.max_sample_weight_ratio >= 1, "max_sample_weight_ratio",
               self.max_sample_weight_ratio, ">= 1")  # fmt: skip
        _check(0 <= self.guard_norm_floor < 1, "guard_norm_floor",
               self.guard_norm_floor, "in [0, 1) (0: no floor)")  # fmt: skip
        _check(self.trust in ("off", "on"), "trust", self.trust, "off or on")
        self.trust_settings()  # raises ConfigError naming the bad trust_* setting
        self._check_broken_uploads()

    def _check_broken_uploads(self) -> None:
        """Staging memory and the repeat-breaker exclusion."""
        _check(self.staging_memory_mb >= 0, "staging_memory_mb",
               self.staging_memory_mb, ">= 0 (0: every update on disk)")  # fmt: skip
        _check(self.max_broken_uploads >= 0, "max_broken_uploads",
               self.max_broken_uploads, ">= 0 (0 never excludes)")  # fmt: skip
        _check(self.broken_upload_window_rounds >= 1, "broken_upload_window_rounds",
               self.broken_upload_window_rounds, ">= 1")  # fmt: skip
        _check(self.exclusion_rounds >= 1, "exclusion_rounds",
               self.exclusion_rounds, ">= 1")  # fmt: skip

    def trust_settings(self) -> TrustSettings:
        """The trust stage's settings as one checked value."""
        return TrustSettings(
            decay=self.trust_decay,
            soft_threshold=self.trust_soft_threshold,
            hard_threshold=self.trust_hard_threshold,
            quarantine_rounds=self.trust_quarantine_rounds,
        )

    def _check_rule_settings(self) -> None:
        """Each rule's knobs: only with their rule, and in range."""
        for name, rules in _RULE_SETTINGS.items():
            value = getattr(self, name)
            if value is None:
                continue
            _check(self.aggregator in rules, name, value, "unset unless aggregator "
                   f"is {' or '.join(repr(r) for r in rules)}")  # fmt: skip
            if name in _INT_SETTINGS:
                least = _INT_SETTINGS[name]
                _check(isinstance(value, int) and not isinstance(value, bool)
                       and value >= least, name, value,
                       f"an integer >= {least}")  # fmt: skip
            else:
                _check(_positive(value), name, value, "a finite number > 0")
        bound, multiple = self.norm_bound, self.norm_bound_multiple
        for name, value in (("norm_bound", bound), ("norm_bound_multiple", multiple)):
            _check(value is None or _positive(value), name, value,
                   "a finite number > 0, or unset (no bound)")  # fmt: skip
        _check(bound is None or multiple is None, "norm_bound", bound,
               "unset when norm_bound_multiple is set (one or the other)")  # fmt: skip


def _positive(value: object) -> bool:
    """A finite int or float > 0 (bools are not numbers here)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
