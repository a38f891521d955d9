"""Goodput: the share of client training time that ends up in applied rounds.

Clients report the wall seconds of training behind each update
(`UpdateHeader.compute_s`, signed). Offered time is every committed
update's plus every refused update's whose work was lost (too stale, its
round closed); applied time is the part in rounds that were applied. Work
lost without a push (a client that crashed mid-round) never reaches the
coordinator: the simulator's goodput (`fedgrpc simulate`) counts that too.

A buffered_async client whose round filled up pushes the same update into
the next round, so a refusal is only provisional: it stays *pending* until
that client's next update. The same base version again means it was
retried (the refusal cost nothing); anything else means it was lost.

The figures are claims, bounded per update (`weighting.MAX_COMPUTE_S`), and
only ever shown (status, metrics); nothing is weighted by them. Since the
coordinator started: a restart begins the counts again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedgrpc.coordinator.rounds.records import OpenRound
from fedgrpc.domain.requests import UpdateHeaderInfo

MAX_PENDING = 4096
"""Refusals awaiting their client's next update; past this the oldest
counts as lost, so churning client ids cannot grow the table."""


@dataclass(slots=True)
class Goodput:
    """Training seconds offered and applied since the coordinator started."""

    settled_s: float = 0.0
    """Offered seconds already settled: committed, or refused and lost."""
    applied_s: float = 0.0
    pending: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Per client, its last refused update: (base version, seconds)."""

    def refused(self, header: UpdateHeaderInfo) -> None:
        """An update refused for its round or base (lost unless retried)."""
        self._settle_pending(header)
        if len(self.pending) >= MAX_PENDING:
            oldest = next(iter(self.pending))
            self.settled_s += self.pending.pop(oldest)[1]
        self.pending[header.client_id] = (header.base_version, header.compute_s or 0.0)

    def committed(self, header: UpdateHeaderInfo) -> None:
        """An update was committed: a refusal of the same work was a retry."""
        self._settle_pending(header)

    def round_closed(self, closing: OpenRound, applied: bool) -> None:
        """Count a closed round's committed updates (applied or not)."""
        self.settled_s += closing.compute_s
        if applied:
            self.applied_s += closing.compute_s

    @property
    def offered_s(self) -> float:
        """Settled seconds plus refusals not yet known to be retries."""
        return self.settled_s + sum(seconds for _, seconds in self.pending.values())

    @property
    def ratio(self) -> float:
        """Applied / offered; 0 until some update reported its training time."""
        offered = self.offered_s
        return self.applied_s / offered if offered > 0 else 0.0

    def _settle_pending(self, header: UpdateHeaderInfo) -> None:
        """Drop the client's pending refusal: retried (same base) or lost."""
        previous = self.pending.pop(header.client_id, None)
        if previous is not None and previous[0] != header.base_version:
            self.settled_s += previous[1]
