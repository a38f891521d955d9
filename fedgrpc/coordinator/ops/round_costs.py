"""What closing each round cost: the outer step, its checkpoint, bytes down.

Kept beside the round engine's history rather than in `RoundResult`: these
are measured by the runtime around the engine's calls (the apply on the
worker thread, the checkpoint after it), after the engine has already
recorded the result. GetStatus joins them to the history by round id.
Not checkpointed: a resumed run reports 0 for rounds closed before it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

KEPT = 100
"""Rounds remembered: as many as the engine's history (`HISTORY_ROUNDS`)."""


@dataclass(frozen=True, slots=True)
class RoundCost:
    """One closed round's close-time costs."""

    apply_s: float = 0.0
    """Aggregate, outer step and their checks, on the numeric worker thread."""
    checkpoint_s: float = 0.0
    """Writing the round's checkpoint before the new version was announced."""
    bytes_sent: int = 0
    """Model bytes sent (PullModel) since the previous round closed."""


NO_COST = RoundCost()


class RoundCosts:
    """The last `KEPT` rounds' costs, by round id (event loop only)."""

    def __init__(self) -> None:
        self._costs: OrderedDict[int, RoundCost] = OrderedDict()
        self._sent_at_last_close = 0

    def record(
        self, round_id: int, started: float, applied: float, bytes_sent: int
    ) -> None:
        """Round `round_id` closed and is durable now.

        `started`, `applied`: `time.perf_counter()` when the apply began and
        ended (the checkpoint ran from then until now); `bytes_sent`: the
        run's total so far.
        """
        down = max(0, bytes_sent - self._sent_at_last_close)
        self._sent_at_last_close = bytes_sent
        checkpoint_s = time.perf_counter() - applied
        self._costs[round_id] = RoundCost(applied - started, checkpoint_s, down)
        while len(self._costs) > KEPT:
            self._costs.popitem(last=False)

    def get(self, round_id: int) -> RoundCost:
        """Round `round_id`'s costs (zeros if unknown: before a restart)."""
        return self._costs.get(round_id, NO_COST)
