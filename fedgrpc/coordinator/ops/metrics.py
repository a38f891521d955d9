"""Prometheus metrics of one coordinator, served over HTTP at `metrics_listen`.

Events (rounds closed, checkpoints, rejections) are counted as they happen;
levels and totals the runtime already keeps (clients connected, bytes in and
out, model version) are read at scrape time, so the hot paths carry no extra
bookkeeping. Each coordinator has its own `CollectorRegistry`, so several in
one process (tests, `fedgrpc simulate`) do not mix their numbers; only
rejections are counted per process, in `status.abort`, which knows no
runtime.

The HTTP server (`metrics_http`) is a bounded one on a daemon thread: reads
time out and connections are capped (`metrics_read_timeout_s`,
`metrics_max_connections`). Values read
from that thread are ints and bools the event loop writes whole, and the
client list is copied in one C-level step (`ClientRegistry.all`).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fedgrpc.coordinator.ops.metrics_http import (
    BoundedHTTPServer,
    split_listen,
    start_metrics_server,
)
from fedgrpc.coordinator.rounds.budget import PrivacyReport
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.record_privacy import max_epsilon
from fedgrpc.coordinator.rounds.records import RoundResult, Run
from fedgrpc.coordinator.rounds.registry import ClientRecord, ClientRegistry
from fedgrpc.coordinator.strategy.trust import TrustBook
from fedgrpc.errors import ConfigError
from fedgrpc.log import get_logger

log = get_logger(__name__)
ROUND_SECONDS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
"""Round durations span seconds (tests, tiny models) to hours (H=500 on a GPU)."""
CHECKPOINT_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120)
REJECTIONS = Counter(
    "fedgrpc_rejections",
    "Requests refused with a gRPC status, by code (per process).",
    ["code"],
    registry=None,
)


def count_rejection(code: str) -> None:
    """Count one refused request (called where errors become status codes)."""
    REJECTIONS.labels(code=code).inc()


class CoordinatorMetrics:
    """The metrics of one coordinator, and their HTTP endpoint.

    Built first (the checkpoint store counts into it while resuming); `watch`
    then adds the levels read from the run, the engine and the registry.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.address = ""
        """host:port the endpoint listens on ("" : not serving)."""
        self._http: BoundedHTTPServer | None = None
        self.rounds = Counter(
            "fedgrpc_rounds", "Closed rounds, by outcome (applied or skipped).",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.round_seconds = Histogram(
            "fedgrpc_round_duration_seconds", "Seconds from round start to close.",
            buckets=ROUND_SECONDS_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.checkpoint_seconds = Histogram(
            "fedgrpc_checkpoint_write_seconds", "Seconds to write one checkpoint.",
            buckets=CHECKPOINT_SECONDS_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.checkpoint_failures = Counter(
            "fedgrpc_checkpoint_failures", "Checkpoint writes that failed.",
            registry=self.registry,
        )  # fmt: skip
        self.serving = Gauge(
            "fedgrpc_serving", "1 while new model versions are served; 0 while a "
            "failed checkpoint write holds them back (see checkpoint_retry_max_s).",
            registry=self.registry,
        )  # fmt: skip
        self.serving.set(1)
        self.registry.register(REJECTIONS)

    def watch(self, run: Run, engine: RoundEngine, clients: ClientRegistry) -> None:
        """Report these levels and totals at every scrape (call once)."""
        self.registry.register(_LevelCollector(run, engine, clients))

    def round_closed(self, result: RoundResult) -> None:
        """Count a closed round and its duration."""
        self.rounds.labels(outcome=result.outcome.value).inc()
        self.round_seconds.observe(result.duration_s)

    def checkpoint_written(self, seconds: float) -> None:
        """Record one successful checkpoint write."""
        self.checkpoint_seconds.observe(seconds)

    def checkpoint_failed(self) -> None:
        """Count one failed checkpoint write."""
        self.checkpoint_failures.inc()

    def serving_changed(self, serving: bool) -> None:
        """Report whether new versions are served (`durable_gate`)."""
        self.serving.set(int(serving))

    def serve(
        self, listen: str, *, read_timeout_s: float = 10.0, max_connections: int = 16
    ) -> str:
        """Start the /metrics HTTP endpoint on `listen` (host:port, port 0 picks).

        Each socket read waits at most `read_timeout_s`; at most
        `max_connections` are served at once (`metrics_http`).

        Raises:
            ConfigError: the address cannot be bound.
        """
        try:
            host, port = split_listen(listen)
            self._http = start_metrics_server(
                host,
                port,
                self.registry,
                read_timeout_s=read_timeout_s,
                max_connections=max_connections,
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"metrics_listen={listen!r} cannot be bound: {exc}"
            ) from exc
        self.address = f"{host}:{self._http.server_port}"
        log.info("metrics_serving", address=self.address)
        return self.address

    def stop(self) -> None:
        """Stop the HTTP endpoint (idempotent)."""
        http, self._http = self._http, None
        if http is not None:
            http.shutdown()
            http.server_close()


class _LevelCollector(Collector):
    """Levels and totals read from the run, engine and registry at scrape time."""

    def __init__(self, run: Run, engine: RoundEngine, clients: ClientRegistry) -> None:
        self.run = run
        self.engine = engine
        self.clients = clients

    def collect(self) -> Iterator[Metric]:
        """One sample per metric, from the current values."""
        run, engine = self.run, self.engine
        clients = self.clients.all()
        yield _gauge("fedgrpc_clients_connected", "Clients with an open Session.",
                     sum(1 for c in clients if c.connected))  # fmt: skip
        gone = self.clients.forgotten + self.clients.evicted
        yield _gauge("fedgrpc_clients_joined", "Clients that joined this run.",
                     len(clients) + gone)  # fmt: skip
        yield _counter("fedgrpc_clients_evicted", "Idle clients without credit "
                       "evicted to make room for a new key (max_clients).",
                       self.clients.evicted)  # fmt: skip
        yield _counter("fedgrpc_update_bytes_received", "Update payload bytes "
                       "received (bytes in).", run.bytes_received)  # fmt: skip
        yield _counter("fedgrpc_model_bytes_sent", "Model bytes sent by PullModel "
                       "(bytes out).", run.bytes_sent)  # fmt: skip
        yield _gauge("fedgrpc_model_version", "Applied rounds so far.",
                     engine.model.version)  # fmt: skip
        current = engine.current
        yield _gauge("fedgrpc_round", "Id of the open round (0: none yet).",
                     current.round_id if current is not None else 0)  # fmt: skip
        yield _gauge("fedgrpc_draining", "1 while the coordinator shuts down.",
                     int(run.stopping))  # fmt: skip
        goodput = engine.goodput
        yield _counter("fedgrpc_compute_offered_seconds", "Training seconds "
                       "clients reported with committed or refused updates.",
                       goodput.offered_s)  # fmt: skip
        yield _counter("fedgrpc_compute_applied_seconds", "The part of those in "
                       "applied rounds.", goodput.applied_s)  # fmt: skip
        yield _gauge("fedgrpc_goodput", "compute applied / offered since start "
                     "(0: none reported).", goodput.ratio)  # fmt: skip
        if engine.trust is not None:
            yield from _trust_metrics(engine.trust)
        if engine.privacy.enabled:
            yield from _privacy_metrics(engine.privacy.report())
        yield from _record_dp_metrics(clients)


def _privacy_metrics(report: PrivacyReport) -> Iterator[Metric]:
    """ε spent, the budget and the mechanism (privacy on only)."""
    yield _gauge("fedgrpc_privacy_epsilon", "Epsilon the run has spent at "
                 "fedgrpc_privacy_delta (dp-accounting).", report.epsilon)  # fmt: skip
    yield _gauge("fedgrpc_privacy_delta", "Delta of every epsilon reported.",
                 report.delta)  # fmt: skip
    yield _gauge("fedgrpc_privacy_max_epsilon", "The run's budget (0: none).",
                 report.max_epsilon)  # fmt: skip
    remaining = report.remaining if report.max_epsilon > 0 else 0.0
    yield _gauge("fedgrpc_privacy_budget_remaining", "max_epsilon minus epsilon "
                 "spent (0 without a budget).", remaining)  # fmt: skip
    yield _gauge("fedgrpc_dp_clip_norm", "S the next round clips each update "
                 "to.", report.clip_norm)  # fmt: skip
    yield _gauge("fedgrpc_dp_noise_multiplier", "z: noise std over S on each "
                 "round's sum.", report.noise_multiplier)  # fmt: skip


def _record_dp_metrics(clients: list[ClientRecord]) -> Iterator[Metric]:
    """Record-level DP claims, aggregated over clients.

    A per-client label would grow with the federation (thousands of series);
    the worst spend is what an alert needs, and `fedgrpc status` lists each
    client's.
    """
    claims = [c.record_dp for c in clients if c.record_dp is not None]
    yield _gauge("fedgrpc_record_dp_clients", "Clients whose last counted update "
                 "claimed record-level DP (an epsilon).", len(claims))  # fmt: skip
    yield _gauge("fedgrpc_record_dp_epsilon_max", "Largest record-level DP epsilon "
                 "a client claimed (0: none), at its delta.",
                 max_epsilon(clients))  # fmt: skip


def _trust_metrics(trust: TrustBook) -> Iterator[Metric]:
    """Trust standings now, and hard quarantines so far (trust = 'on' only)."""
    standings = list(trust.standings.values())  # one C-level copy: loop-safe
    states = collections.Counter(s.state for s in standings)
    yield _gauge("fedgrpc_trust_quarantined", "Clients in hard quarantine "
                 "(excluded) now.", states["quarantined"])  # fmt: skip
    yield _gauge("fedgrpc_trust_soft_quarantined", "Clients in soft quarantine "
                 "(weight reduced) now.", states["soft"])  # fmt: skip
    yield _gauge("fedgrpc_trust_probation", "Readmitted clients on probation now.",
                 states["probation"])  # fmt: skip
    yield _gauge("fedgrpc_trust_score_min", "Lowest trust score of a scored "
                 "client (1: none scored).",
                 min((s.score for s in standings), default=1.0))  # fmt: skip
    yield _counter("fedgrpc_trust_quarantines", "Hard quarantines imposed in this "
                   "run.", trust.quarantines)  # fmt: skip


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
