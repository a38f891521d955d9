"""The plain rounds' divergence guard: skip a round whose mean update blows up.

Self-calibrating: a round's aggregate norm is compared with the median of
the norms applied in the last `GUARD_WINDOW_ROUNDS` rounds (once
`GUARD_WARMUP_ROUNDS` of them exist), so no absolute scale has to be
guessed per model. A NaN/Inf norm always trips it.

The history is what a hostile client would steer, so it is built not to be
steerable by one client (issue 13, A.2: a client pushing zeros with huge
sample counts for 6 rounds drove the median to 1e-11, and every honest round
after that tripped, also after a restart):

* what it watches is the aggregate the Aggregator made under `weighting`
  (by default the weight-capped mean: a liar's sample claim counts at most
  `max_sample_weight_ratio` typical clients, `rounds.weighting`);
* the median is floored at `guard_norm_floor` x ||w|| (the global weights'
  norm): near-zero rounds cannot pull the limit below a move of
  `max_update_norm_growth` x floor of the model (1 % by default), which no
  blow-up stays under;
* entries carry the round that applied them and expire `GUARD_WINDOW_ROUNDS`
  rounds later, applied or not: skipped and tripped rounds age the history,
  so a poisoned history is gone within 8 rounds and the guard warms up
  again instead of refusing forever;
* an operator can clear it at once (`reset`: AdminService/ResetDivergenceGuard,
  `fedgrpc guard-reset`).

Pure Python on a few floats per round. `judge` runs on the apply thread and
`reset` on the event loop, so a lock (held for microseconds) orders them.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable

GUARD_WARMUP_ROUNDS = 3
"""Norms in the window before the guard has a median to compare with."""
GUARD_WINDOW_ROUNDS = 8
"""Rounds a norm stays in the history, counted in round ids (skipped ones too)."""


class NormGuard:
    """Judges each plain round's aggregate norm against its recent history."""

    def __init__(self, growth: float, floor_ratio: float) -> None:
        """Settings: max_update_norm_growth (0: off) and guard_norm_floor."""
        self.growth = growth
        self.floor_ratio = floor_ratio
        self.trips = 0
        """Rounds it refused in this process (not checkpointed)."""
        self._norms: deque[tuple[int, float]] = deque()
        """(round id, norm) of applied rounds, oldest first."""
        self._lock = threading.Lock()

    def judge(
        self, round_id: int, norm: float, model_norm: Callable[[], float]
    ) -> str | None:
        """Why round `round_id`'s aggregate (of `norm`) must not be applied, or None.

        `model_norm()` is ||w|| of the weights it would move (the floor's
        scale); it is a model-sized read (~23 ms at 10.5M parameters), so it
        is only called for a round over the unfloored limit. A round it lets
        through joins the history.
        """
        with self._lock:
            self._expire(round_id)
            reason = self._reason(norm, model_norm)
            if reason is not None:
                self.trips += 1
                return reason
            self._norms.append((round_id, norm))
            return None

    def _reason(self, norm: float, model_norm: Callable[[], float]) -> str | None:
        if not math.isfinite(norm):
            return "divergence guard: the mean update is not finite"
        if self.growth <= 0 or len(self._norms) < GUARD_WARMUP_ROUNDS:
            return None
        ordered = sorted(n for _, n in self._norms)
        median = ordered[len(ordered) // 2]
        if norm <= self.growth * median:
            return None
        typical = max(median, self.floor_ratio * model_norm())
        if norm <= self.growth * typical:
            return None
        floored = " (floored at guard_norm_floor x the weights' norm)"
        return (
            f"divergence guard: the mean update's norm {norm:.3g} is over "
            f"{self.growth:g}x the recent median {typical:.3g}"
            f"{floored if typical > median else ''}; weights unchanged (raise "
            "max_update_norm_growth, 0 disables; `fedgrpc guard-reset` clears "
            "the history)"
        )

    def _expire(self, round_id: int) -> None:
        """Drop norms applied `GUARD_WINDOW_ROUNDS` or more rounds before `round_id`."""
        norms = self._norms
        while norms and norms[0][0] <= round_id - GUARD_WINDOW_ROUNDS:
            norms.popleft()

    def reset(self) -> int:
        """Forget the history (operator action); returns the norms dropped."""
        with self._lock:
            dropped = len(self._norms)
            self._norms.clear()
            return dropped

    @property
    def history(self) -> list[tuple[int, float]]:
        """(round id, norm) pairs, oldest first (checkpoints)."""
        with self._lock:
            return list(self._norms)

    def restore(self, history: list[tuple[int, float]]) -> None:
        """Adopt a checkpoint's history (see `history`)."""
        with self._lock:
            self._norms.clear()
            self._norms.extend(history[-GUARD_WINDOW_ROUNDS:])
