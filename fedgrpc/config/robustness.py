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
    staging_memory_mb: int = 1024
    """RAM for updates still streaming into a summed round: each stays apart
    (d x 4 bytes dense, its indices and values top-k) until it commits, so a
    broken one costs the round nothing. Past this, dense ones are staged on
    disk in spool_dir. 0 stages every one on disk."""
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
        _check(agg in ("mean", "median", "trimmed_mean") or ":" in agg, "aggregator",
               agg, "mean, median, trimmed_mean or package.module:Class")  # fmt: skip
        _check(beta is None or agg == "trimmed_mean", "trimmed_mean_beta", beta,
               "unset unless aggregator = 'trimmed_mean'")  # fmt: skip
        _check(self.accumulator in ("auto", "streaming_sum", "spool"), "accumulator",
               self.accumulator, "auto, streaming_sum or spool")  # fmt: skip
        _check(self.max_update_norm_growth >= 0, "max_update_norm_growth",
               self.max_update_norm_growth, ">= 0 (0 disables the guard)")  # fmt: skip
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
