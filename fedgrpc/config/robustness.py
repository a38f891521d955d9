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
    """How a round's updates become one: `mean` (sample-weighted, FedAvg),
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
    max_update_norm_growth: float = 10.0
    """Divergence guard: skip a round whose mean update norm exceeds this many
    times the median of recent rounds' (after 3 applied rounds); 0 disables."""

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
