"""Liveness, deadlines and resource bounds: a section of `CoordinatorConfig`.

A mixin so TOML keys and `--flags` stay flat; `CoordinatorConfig` inherits
it and calls `_check_limits` from its `__post_init__`. Not slotted:
slotted dataclasses cannot be combined as several bases.

Every bound here holds before authentication too: a stream that never
says who it is, a pull that stops reading, and an HTTP scrape that never
finishes its request each end after a deadline and count against a cap,
so no one peer can pin memory, threads or file descriptors for good.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgrpc.errors import check_config as _check

STREAMS_PER_CLIENT = 4
"""Streams an honest client holds at once: its Session, one PushUpdate, one
PullModel, and one more while a reconnect overlaps the old Session."""
STREAM_SLACK = 64
"""Streams on top of `STREAMS_PER_CLIENT x max_clients`: joiners still
opening their first Session, admin tools."""


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """The stream caps in force (the derived defaults filled in)."""

    per_connection: int
    """Session, PushUpdate and PullModel streams open on one HTTP/2 connection."""
    total: int
    """The same streams open on the whole coordinator."""


@dataclass(frozen=True, kw_only=True)
class LimitSettings:
    """How long the coordinator waits for whom, and how much it holds at once."""

    heartbeat_interval_s: float = 5.0
    """Seconds between heartbeats clients are expected to send."""
    session_timeout_s: float = 30.0
    """A client silent this long is dropped from the round it is part of."""
    first_message_timeout_s: float = 10.0
    """Seconds a Session or PushUpdate stream may stay open before its first
    message (Session's `open`, PushUpdate's header); then it ends with
    DEADLINE_EXCEEDED. Honest clients send it at once; the deadline keeps
    unauthenticated streams from piling up (20,000 idle ones held 280 MB)."""
    stream_idle_timeout_s: float = 30.0
    """Seconds a PushUpdate may go without a message between its header,
    chunks and commit; then it ends with DEADLINE_EXCEEDED and the push is
    abandoned, so a round never waits on a client holding a header open."""
    pull_timeout_s: float = 600.0
    """Seconds a PullModel may take from the moment its model version is ready
    (waiting for a newer version does not count) to its last chunk; a pull
    that stopped reading is then cancelled (DEADLINE_EXCEEDED) and lets go of
    the version it pinned. 600 s moves 400 MB at 0.7 MB/s."""
    max_streams_per_connection: int = 0
    """Session, PushUpdate and PullModel streams one connection (`peer`) may
    hold open; more are refused with RESOURCE_EXHAUSTED. 0: half of
    `max_streams_total` (clients in one process can share one connection,
    so this is not per client)."""
    max_streams_total: int = 0
    """Those streams open on the whole coordinator; more are refused with
    RESOURCE_EXHAUSTED. 0: 4 x max_clients + 64 (each client holds at most a
    Session, a push, a pull and a reconnect's overlap)."""
    metrics_read_timeout_s: float = 10.0
    """Seconds the metrics endpoint waits on a socket read before it closes the
    connection (a scrape that never finishes its request)."""
    metrics_max_connections: int = 16
    """Metrics connections served at once (one thread each); more are closed
    on accept, so half-open scrapes cannot exhaust file descriptors."""

    def _check_limits(self) -> None:
        """Every bound positive; the session outlives a heartbeat."""
        _check(self.heartbeat_interval_s > 0, "heartbeat_interval_s",
               self.heartbeat_interval_s, "> 0")  # fmt: skip
        _check(self.session_timeout_s > self.heartbeat_interval_s, "session_timeout_s",
               self.session_timeout_s, "> heartbeat_interval_s")  # fmt: skip
        for name in ("first_message_timeout_s", "stream_idle_timeout_s",
                     "pull_timeout_s", "metrics_read_timeout_s"):  # fmt: skip
            value = getattr(self, name)
            _check(value > 0, name, value, "> 0 (seconds)")
        for name in ("max_streams_per_connection", "max_streams_total"):
            value = getattr(self, name)
            _check(value >= 0, name, value, ">= 0 (0: derived from max_clients)")
        _check(self.metrics_max_connections >= 1, "metrics_max_connections",
               self.metrics_max_connections, ">= 1")  # fmt: skip

    def stream_limits(self, max_clients: int) -> StreamLimits:
        """The stream caps in force for a coordinator admitting `max_clients`."""
        total = (
            self.max_streams_total or STREAMS_PER_CLIENT * max_clients + STREAM_SLACK
        )
        per_connection = self.max_streams_per_connection or max(1, total // 2)
        return StreamLimits(min(per_connection, total), total)
