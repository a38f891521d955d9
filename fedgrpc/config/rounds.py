"""When a round closes and whose updates it takes: a section of `CoordinatorConfig`.

A synchronous round waits for its slowest client; with one client 4x
slower than the rest, the fast ones spend most of their time idle. The
round modes trade that idle time for something else:

* `sync`: every connected client pushes once per round, from the round's
  base version (the behaviour before round modes existed).
* `deadline`: rounds of `round_duration_s` wall seconds. Each client
  trains as many inner steps as fit before the round's deadline, then
  pushes; fast clients train more, and the mean weights each update by the
  samples (steps, tokens) it reports (`weighting = "samples"`).
* `buffered_async` (FedBuff, Nguyen et al. 2022, arXiv 2106.06639): the
  round closes as soon as `buffer_size` updates are in, and takes updates
  computed from any version at most `max_staleness` behind its own; an
  update τ versions stale has its values scaled by
  s(τ) = (1 + τ)^(-staleness_exponent) (the polynomial staleness function of
  FedAsync, Xie et al. 2019, arXiv 1903.03934, which FedBuff uses; 0.5 gives
  1/√(1+τ)). Slow clients no longer hold rounds up; their work still lands.
* `streaming` (Streaming DiLoCo, Douillard et al. 2025, arXiv 2501.18512):
  the flat parameter vector is split into `fragments` (P) contiguous
  ranges, and each round syncs one of them, in turn (round of base version
  v syncs fragment v mod P). A client syncs every H/P inner steps, so each
  fragment still travels once per H steps, but a sync moves 1/P of the
  model both ways: peak bandwidth falls P-fold. With
  `streaming_overlap_steps` τ > 0 the client keeps training while its
  fragment is in flight and merges the result τ steps later as
  θ ← alpha·θ_local + (1 - alpha)·θ_global (alpha = `streaming_mix`), so the
  exchange hides behind τ steps of compute.

A mixin so TOML keys and `--flags` stay flat; `CoordinatorConfig` inherits
it and calls `_check_round_mode` from its `__post_init__`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fedgrpc.errors import check_config as _check

RoundMode = Literal["sync", "deadline", "buffered_async", "streaming"]
ROUND_MODES: tuple[RoundMode, ...] = ("sync", "deadline", "buffered_async", "streaming")
MAX_FRAGMENTS = 64
"""Largest `fragments`: each keeps its own outer-optimizer state and round."""
MAX_STALENESS_LIMIT = 256
"""Largest `max_staleness`: the coordinator keeps the SHA-256 of this many
published versions, which an update from an older base must sign."""


@dataclass(frozen=True, kw_only=True)
class RoundModeSettings:
    """How rounds are paced: `round_mode` and the settings each mode reads."""

    round_mode: str = "sync"
    """`sync` (every client pushes once per round from its base), `deadline`
    (rounds of `round_duration_s`; clients train as many steps as fit) or
    `buffered_async` (FedBuff: a round closes at `buffer_size` updates and
    takes updates up to `max_staleness` versions old, scaled by staleness)
    or `streaming` (Streaming DiLoCo: each round syncs one of `fragments`
    parameter ranges, every H/P inner steps)."""
    round_duration_s: float = 0.0
    """Deadline mode: wall seconds of training per round, counted from the
    round's start; clients push when it passes, and the round closes when
    every connected client has committed, or `round_timeout_s` after the
    training deadline with what it has. Required (> 0) with `deadline`."""
    buffer_size: int = 0
    """buffered_async: K, the updates that close a round (FedBuff's buffer).
    0 means `min_clients`. A round with fewer connected clients than K
    closes when all of them committed, as in sync."""
    max_staleness: int = 4
    """buffered_async: τ_max, how many versions behind the round's base an
    update may be computed; older ones are refused (FAILED_PRECONDITION,
    the client pulls the newest model and goes on). 0..256."""
    staleness_exponent: float = 0.5
    """buffered_async: a in s(τ) = (1 + τ)^-a, the factor an update τ versions
    stale is scaled by before it is averaged (0.5: 1/√(1+τ), FedBuff's
    choice; 0: no discount). Its weight in the mean's denominator stays, so
    a round of stale updates takes a shorter step rather than overshooting."""

    fragments: int = 4
    """streaming: P, the contiguous parameter ranges synced in turn (2..64;
    `inner_steps` must be a multiple of it). Each sync moves 1/P of the
    model; each fragment keeps its own outer-optimizer state."""
    streaming_overlap_steps: int = 1
    """streaming: τ, inner steps a client trains while its fragment is in
    flight before it merges the result (0: wait for it, as a sync round
    does). Must be < inner_steps / fragments, so a fragment is back before
    the next one leaves."""
    streaming_mix: float = 0.5
    """streaming: alpha in θ ← alpha·θ_local + (1 - alpha)·θ_global, how much of the τ
    overlapped steps' local progress a merged fragment keeps (0..1; 0:
    take the global fragment as is). 0.5 is Streaming DiLoCo's choice."""

    def _check_round_mode(
        self, secure_aggregation: bool, min_clients: int, inner_steps: int = 1
    ) -> None:
        """Known mode; each mode's settings in range; refuse what cannot work."""
        _check(self.round_mode in ROUND_MODES, "round_mode", self.round_mode,
               " | ".join(ROUND_MODES))  # fmt: skip
        _check(math.isfinite(self.round_duration_s) and self.round_duration_s >= 0,
               "round_duration_s", self.round_duration_s, ">= 0 (seconds)")  # fmt: skip
        _check(self.round_mode != "deadline" or self.round_duration_s > 0,
               "round_duration_s", self.round_duration_s,
               "> 0 with round_mode = 'deadline' (the seconds clients train "
               "per round)")  # fmt: skip
        _check(self.buffer_size >= 0, "buffer_size", self.buffer_size,
               ">= 0 (0: min_clients)")  # fmt: skip
        _check(self.buffer_size == 0 or self.buffer_size >= min_clients,
               "buffer_size", self.buffer_size, f">= min_clients ({min_clients}): "
               "a round needs min_clients updates to be applied")  # fmt: skip
        _check(0 <= self.max_staleness <= MAX_STALENESS_LIMIT, "max_staleness",
               self.max_staleness, f"0..{MAX_STALENESS_LIMIT}")  # fmt: skip
        _check(math.isfinite(self.staleness_exponent)
               and 0 <= self.staleness_exponent <= 4, "staleness_exponent",
               self.staleness_exponent, "0..4 (0: no discount)")  # fmt: skip
        _check(not (secure_aggregation and self.round_mode != "sync"), "round_mode",
               self.round_mode, "sync with secure_aggregation: a masked round "
               "sums updates from one base in lockstep phases (keys, shares, "
               "push, unmask), so neither stale updates scaled one by one nor a "
               "training window before the push fit it, nor fragments synced "
               "in turn while training goes on")  # fmt: skip
        self._check_streaming(inner_steps)

    def _check_streaming(self, inner_steps: int) -> None:
        """Fragment count and overlap that a staggered schedule can keep."""
        _check(2 <= self.fragments <= MAX_FRAGMENTS, "fragments", self.fragments,
               f"2..{MAX_FRAGMENTS}")  # fmt: skip
        _check(self.streaming_overlap_steps >= 0, "streaming_overlap_steps",
               self.streaming_overlap_steps, ">= 0")  # fmt: skip
        _check(math.isfinite(self.streaming_mix) and 0 <= self.streaming_mix <= 1,
               "streaming_mix", self.streaming_mix, "0..1")  # fmt: skip
        if self.round_mode != "streaming":
            return
        _check(inner_steps % self.fragments == 0, "fragments", self.fragments,
               f"a divisor of inner_steps ({inner_steps}) with round_mode = "
               "'streaming': a client syncs one fragment every "
               "inner_steps / fragments steps")  # fmt: skip
        interval = inner_steps // self.fragments
        _check(self.streaming_overlap_steps < interval, "streaming_overlap_steps",
               self.streaming_overlap_steps, f"< inner_steps / fragments "
               f"({interval}): a fragment must be merged before the next one "
               "leaves")  # fmt: skip

    def staleness_scale(self, staleness: int) -> float:
        """s(τ) = (1 + τ)^-a for an update `staleness` versions behind (1 at τ = 0)."""
        if staleness <= 0 or self.staleness_exponent == 0:
            return 1.0
        return float((1.0 + staleness) ** -self.staleness_exponent)
