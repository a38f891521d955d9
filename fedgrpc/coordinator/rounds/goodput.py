"""Goodput: the share of client training time that ends up in applied rounds.

Clients report the wall seconds of training behind each update
(`UpdateHeader.compute_s`, signed). Offered time is every committed
update's plus every update refused for its round or base (too stale, the
round closed); applied time is the part in rounds that were applied. Work
lost without a push (a client that crashed mid-round) never reaches the
coordinator: the simulator's goodput (`fedgrpc simulate`) counts that too.

The figures are claims, bounded per update (`weighting.MAX_COMPUTE_S`), and
only ever shown (status, metrics); nothing is weighted by them. Since the
coordinator started: a restart begins the counts again.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgrpc.coordinator.rounds.records import OpenRound
from fedgrpc.domain.requests import UpdateHeaderInfo


@dataclass(slots=True)
class Goodput:
    """Training seconds offered and applied since the coordinator started."""

    offered_s: float = 0.0
    applied_s: float = 0.0

    def refused(self, header: UpdateHeaderInfo) -> None:
        """An update refused for its round or base: its training was lost."""
        self.offered_s += header.compute_s or 0.0

    def round_closed(self, closing: OpenRound, applied: bool) -> None:
        """Count a closed round's committed updates (applied or not)."""
        self.offered_s += closing.compute_s
        if applied:
            self.applied_s += closing.compute_s

    @property
    def ratio(self) -> float:
        """Applied / offered; 0 until some update reported its training time."""
        return self.applied_s / self.offered_s if self.offered_s > 0 else 0.0
