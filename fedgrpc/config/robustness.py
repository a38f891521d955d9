"""How a round's updates are weighted, combined and guarded (a config section).

A mixin rather than a nested table so TOML keys and `--flags` stay flat
(`aggregator = "median"`, `--aggregator median`); `CoordinatorConfig`
inherits it and calls `_check_robustness` from its `__post_init__`. Not
slotted: slotted dataclasses cannot be combined as several bases.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fedgrpc.errors import check_config as _check


@dataclass(frozen=True, kw_only=True)
class RobustnessSettings:
    """The aggregator stage and the divergence guard; see `CoordinatorConfig`."""

    aggregator: str = "mean"
    """How a round's updates become one: `mean` (sample-weighted, FedAvg),
    `median` (coordinate-wise), `trimmed_mean` (drops `trimmed_mean_beta` of
    each side per coordinate) or `package.module:Class`. The robust rules need
    every update, so they spool them to `spool_dir` (not with secure_aggregation)."""
    aggregator_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of a `module:Class` aggregator's constructor."""
    trimmed_mean_beta: float | None = None
    """Fraction in [0, 0.5) trimmed from each side; None means 0.1. Only with
    aggregator = trimmed_mean."""
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
        _check(agg in ("mean", "median", "trimmed_mean") or ":" in agg, "aggregator",
               agg, "mean, median, trimmed_mean or package.module:Class")  # fmt: skip
        _check(beta is None or agg == "trimmed_mean", "trimmed_mean_beta", beta,
               "unset unless aggregator = 'trimmed_mean'")  # fmt: skip
        _check(self.accumulator in ("auto", "streaming_sum", "spool"), "accumulator",
               self.accumulator, "auto, streaming_sum or spool")  # fmt: skip
        _check(self.max_update_norm_growth >= 0, "max_update_norm_growth",
               self.max_update_norm_growth, ">= 0 (0 disables the guard)")  # fmt: skip
