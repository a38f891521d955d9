"""The coordinator's HTTP server, bounded: a read timeout and a connection cap.

One server class for `/metrics` alone (`metrics_listen`) and for the
dashboard's endpoints (`http_listen`, `services.http_app`).

prometheus_client's own `start_http_server` runs a thread per connection
and reads with no timeout, so a client that opens connections and never
finishes a request holds a thread and a file descriptor each, for good:
enough of them exhausted the process's descriptors and gRPC clients could
no longer connect. Here every socket read (and write: a reader that stopped
reading an event stream) times out after `read_timeout_s` (the connection
is then closed), and at most `max_connections` are served at once; one more
is closed as soon as it is accepted, so descriptors held by this endpoint
never exceed the cap plus the one being refused.

A scrape needs one connection for well under a second; Prometheus itself
keeps one per target, so the default cap of 16 leaves room for several
scrapers and a person with curl.
"""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import WSGIApplication

from prometheus_client import CollectorRegistry, make_wsgi_app

from fedgrpc.log import get_logger

log = get_logger(__name__)


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (the coordinator logs JSON there)."""

    def log_message(self, format: str, *args: Any) -> None:
        """Drop wsgiref's per-request line."""


class BoundedHTTPServer(ThreadingMixIn, WSGIServer):
    """A threaded WSGI server with a read timeout and a connection cap."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64
    """The listen backlog: connections beyond the cap are accepted (and
    closed) quickly, so a flood must not make honest connects wait on SYN
    retries behind a 5-deep queue (socketserver's default)."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        read_timeout_s: float,
        max_connections: int,
    ) -> None:
        self.address_family = _family(address[0])
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self.refused = 0
        """Connections closed on accept because the cap was reached."""
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve on a thread if a slot is free; otherwise close at once."""
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        request.settimeout(self.read_timeout_s)
        try:
            super().process_request(request, client_address)
        except BaseException:  # the thread did not start: give the slot back
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that timed out or broke: logged, not printed to stderr."""
        log.debug("http_connection_failed", peer=str(client_address))

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """One connection on its thread; the slot is freed when it closes."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _family(host: str) -> socket.AddressFamily:
    """IPv6 for a host that resolves only to IPv6 ("::", "::1"), else IPv4."""
    infos = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM)
    families = {info[0] for info in infos}
    return socket.AF_INET if socket.AF_INET in families else socket.AF_INET6


def split_listen(listen: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets or not) as (host, port).

    Raises:
        ValueError: no port, or one that is not a number.
    """
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def start_http_server(
    host: str,
    port: int,
    app: WSGIApplication,
    *,
    read_timeout_s: float,
    max_connections: int,
    name: str = "fedgrpc-http",
) -> BoundedHTTPServer:
    """Serve the WSGI `app` at http://host:port on a daemon thread.

    Raises:
        OSError: the address cannot be bound.
    """
    server = BoundedHTTPServer(
        (host, port), read_timeout_s=read_timeout_s, max_connections=max_connections
    )
    server.set_app(app)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return server


def start_metrics_server(
    host: str,
    port: int,
    registry: CollectorRegistry,
    *,
    read_timeout_s: float,
    max_connections: int,
) -> BoundedHTTPServer:
    """Serve `registry` at http://host:port/metrics on a daemon thread.

    Raises:
        OSError: the address cannot be bound.
    """
    return start_http_server(
        host,
        port,
        make_wsgi_app(registry),
        read_timeout_s=read_timeout_s,
        max_connections=max_connections,
        name="fedgrpc-metrics",
    )
