"""What an operator may see of secure rounds: counts, sizes, seconds, reasons.

`SecureMode` reports each masked round here at three points (set up,
unmasked or aborted, closed by the engine); this module turns them into the
`fedgrpc_secagg_*` Prometheus metrics and the secure fields of AdminService
status (`admin.build_status`). Only counts, seconds and reason *names* are
kept, never keys, shares, masks, positions or values, so nothing here can
leak what secure aggregation hides. Created only by `SecureMode`: a plain
coordinator registers none of these metrics.

Not thread-safe: written from the event loop. The scrape thread reads ints
the loop writes whole (as in `metrics.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fedgrpc.coordinator.round_mode import OTHER_REASON
from fedgrpc.coordinator.rounds.engine import HISTORY_ROUNDS
from fedgrpc.coordinator.rounds.records import OpenRound, Outcome, RoundResult
from fedgrpc.coordinator.secure.index_planner import SharedIndexPlanner
from fedgrpc.coordinator.secure.masked_round import SecureRound
from fedgrpc.secagg import AggregateResult
from fedgrpc.secagg.errors import AbortReason
from fedgrpc.wire.secagg import SecureRoundSetup

GUARD_REASON = "divergence_guard"
"""Recovered, then voided by the divergence guard (`index_planner`)."""
INTERNAL_REASON = "internal"
"""An unexpected error while advancing the round (`SecureMode._advance`)."""
PRIVACY_REASON = "dp_refused"
"""Distributed DP refused to unmask the sum: fewer noise shares than
`dp_min_survivors`, or the run's privacy budget (`secure.noise`)."""
REASONS = frozenset({*(r.value for r in AbortReason), GUARD_REASON,
                     INTERNAL_REASON, PRIVACY_REASON, OTHER_REASON})  # fmt: skip
"""Every `reason` label value: a fixed set keeps the series count bounded."""
PARTICIPANT_BUCKETS = (3, 4, 5, 8, 10, 16, 32, 64, 128, 256, 512, 1024)
"""SecAgg+ needs at least 3 clients; federations here run to hundreds."""
DROPOUT_BUCKETS = (0, 1, 2, 3, 4, 8, 16, 32, 64, 128)
UNMASK_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
"""Unmasking regenerates one PRG stream per dropped pair: ms (tests) to minutes."""


@dataclass(slots=True)
class SecureRoundStats:
    """One masked round as status shows it (no secret, no value)."""

    round_id: int
    participants: int
    positions: int
    """Coordinates of the sparse index set; 0 = dense."""
    survivors: int = 0
    """Participants whose masked update reached the ring sum."""
    unmask_s: float = 0.0
    abort_reason: str = ""
    """One of `REASONS`; empty while running or once applied."""
    settled: bool = False
    """The engine closed the round and the metrics counted it."""


class SecureStats:
    """The secure rounds' metrics and per-round records (module docstring)."""

    def __init__(
        self, registry: CollectorRegistry, planner: SharedIndexPlanner
    ) -> None:
        self.planner = planner
        self.rounds: dict[int, SecureRoundStats] = {}
        """Recent masked rounds by id, as many as the engine's history holds."""
        self.last_positions = 0
        """Coordinates masked in the last announced round (every one when dense)."""
        self._rounds = Counter(
            "fedgrpc_secagg_rounds", "Masked rounds closed, by outcome (applied or "
            "aborted) and reason (none when applied).", ["outcome", "reason"],
            registry=registry,
        )  # fmt: skip
        self._participants = Histogram(
            "fedgrpc_secagg_participants", "Clients each masked round was set up "
            "for.", buckets=PARTICIPANT_BUCKETS, registry=registry,
        )  # fmt: skip
        self._dropouts = Histogram(
            "fedgrpc_secagg_dropouts", "Participants per closed masked round whose "
            "update did not reach the sum.", buckets=DROPOUT_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self._unmask = Histogram(
            "fedgrpc_secagg_unmask_seconds", "Seconds to unmask one round's sum.",
            buckets=UNMASK_SECONDS_BUCKETS, registry=registry,
        )  # fmt: skip
        registry.register(_LevelCollector(self))

    def started(self, announce: SecureRoundSetup) -> None:
        """A masked round was set up and announced to its participants."""
        setup, sparse = announce.setup, announce.positions is not None
        positions = announce.num_positions if sparse else 0
        self.rounds[setup.round_id] = SecureRoundStats(
            setup.round_id, len(setup.participants), positions
        )
        while len(self.rounds) > HISTORY_ROUNDS:
            del self.rounds[next(iter(self.rounds))]  # oldest first (insertion order)
        self.last_positions = announce.num_positions
        self._participants.observe(len(setup.participants))

    def recovered(
        self, current: OpenRound, result: AggregateResult, seconds: float
    ) -> None:
        """The sum was unmasked (call after the guard judged it: it may void it)."""
        record = self.rounds.get(current.round_id)
        if record is not None:
            record.survivors, record.unmask_s = len(result.survivors), seconds
            if current.void_reason is not None:
                record.abort_reason = GUARD_REASON
        self._unmask.observe(seconds)

    def aborted(self, rnd: SecureRound, reason: str) -> None:
        """The masked round was voided; `reason` is an `AbortReason` or internal."""
        record = self.rounds.get(rnd.round_id)
        if record is not None:
            record.survivors = len(rnd.committed)
            record.abort_reason = reason if reason in REASONS else OTHER_REASON

    def settle(self, history: Iterable[RoundResult]) -> None:
        """Count the masked rounds the engine has closed since the last call."""
        for result in history:
            record = self.rounds.get(result.round_id)
            if record is None or record.settled:
                continue
            record.settled = True
            if result.outcome is Outcome.APPLIED:
                outcome, reason = "applied", "none"
            else:
                outcome = "aborted"
                record.abort_reason = record.abort_reason or OTHER_REASON
                reason = record.abort_reason
            self._rounds.labels(outcome=outcome, reason=reason).inc()
            self._dropouts.observe(record.participants - record.survivors)


class _LevelCollector(Collector):
    """Levels and totals read at scrape time; guard ones only for sparse rounds."""

    def __init__(self, stats: SecureStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        """The positions gauge, and the guard's counters when it can trip."""
        stats, planner = self.stats, self.stats.planner
        yield GaugeMetricFamily(
            "fedgrpc_secagg_positions", "Coordinates masked in the last announced "
            "round (all of them when dense).", value=stats.last_positions,
        )  # fmt: skip
        if planner.enabled:  # dense-only federations have no guard
            yield CounterMetricFamily(
                "fedgrpc_secagg_guard_trips", "Times the divergence guard refused "
                "a sparse masked round.", value=planner.trips,
            )  # fmt: skip
            yield CounterMetricFamily(
                "fedgrpc_secagg_dense_fallback_rounds", "Masked rounds announced "
                "dense because the divergence guard tripped.",
                value=planner.dense_fallbacks,
            )  # fmt: skip
