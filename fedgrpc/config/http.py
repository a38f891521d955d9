"""The coordinator's HTTP server (dashboard, status, probes): a config section.

A section of `CoordinatorConfig`.

A mixin so TOML keys and `--flags` stay flat; `CoordinatorConfig` inherits
it and calls `_check_http` from its `__post_init__`. Not slotted: slotted
dataclasses cannot be combined as several bases.

The bounds follow `config.limits`: reads time out and connections are
capped, so a slow or idle HTTP client cannot exhaust threads or file
descriptors. Event streams (the dashboard's live feed) hold a connection
for as long as a browser tab is open, so they have a cap of their own
below the connection cap: open dashboards can never lock out /metrics,
/healthz or /readyz.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgrpc.errors import check_config as _check


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    """Where and how the dashboard and its JSON / probe endpoints are served."""

    http_listen: str = ""
    """host:port of the coordinator's HTTP server (e.g. 127.0.0.1:8080): the
    live dashboard at `/`, `/api/v1/status` (GetStatus as JSON),
    `/api/v1/events` (server-sent events), `/metrics`, `/healthz` and
    `/readyz`. "" serves none. Plain HTTP: bind it to loopback or a private
    interface, or put a TLS proxy in front. The dashboard and `/api/` need
    the admin token (`admin_token_file`) unless `admin_access` is set to
    `loopback` (explicitly, for callers on this host) or `open`."""
    http_read_timeout_s: float = 10.0
    """Seconds the HTTP server waits on a socket read or write before it
    closes the connection (a request never finished, an event stream never
    read)."""
    http_max_connections: int = 32
    """HTTP connections served at once (one thread each); more are closed on
    accept."""
    http_max_event_streams: int = 16
    """Open `/api/v1/events` streams (one per dashboard tab); more get 503.
    Below `http_max_connections`, so dashboards never take every connection."""

    def _check_http(self, admin_token_file: str, admin_access: str) -> None:
        """Address shape, positive bounds, and someone able to read the page."""
        _check(not self.http_listen or ":" in self.http_listen, "http_listen",
               self.http_listen, "host:port or empty")  # fmt: skip
        _check(self.http_read_timeout_s > 0, "http_read_timeout_s",
               self.http_read_timeout_s, "> 0 (seconds)")  # fmt: skip
        _check(self.http_max_event_streams >= 1, "http_max_event_streams",
               self.http_max_event_streams, ">= 1")  # fmt: skip
        _check(self.http_max_connections > self.http_max_event_streams,
               "http_max_connections", self.http_max_connections,
               f"> http_max_event_streams ({self.http_max_event_streams}), so "
               "open dashboards leave room for /metrics and the probes")  # fmt: skip
        _check(not self.http_listen or bool(admin_token_file)
               or admin_access in ("loopback", "open"), "http_listen",
               self.http_listen, "set together with admin_token_file (the "
               "dashboard's credential), or admin_access = \"loopback\" to open "
               "it to this host without one (else nobody could read it)")  # fmt: skip
