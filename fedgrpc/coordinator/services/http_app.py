"""The coordinator's HTTP server: dashboard, status JSON, events, metrics, probes.

One bounded server (`ops.metrics_http`: read timeout, connection cap) at
`http_listen`, one WSGI app routing a handful of fixed paths:

| path | what | credential |
| --- | --- | --- |
| `/` (+ `/dashboard.js`, `/dashboard.css`) | the live dashboard | admin |
| `/api/v1/status` | GetStatus, every client, as JSON | admin |
| `/api/v1/events` | server-sent events: that JSON on every round change | admin |
| `/metrics` | the Prometheus registry (as at `metrics_listen`) | none |
| `/healthz` | 200 while the event loop answers | none |
| `/readyz` | 200 while a model is served (seeded, not NOT_SERVING) | none |

Probes and /metrics stay open as `metrics_listen` always was: they carry
no client ids, and Kubernetes probes send no token. Anything else is 404;
a method other than GET or HEAD is 405. Credentials: `http_access`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import make_wsgi_app

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.ops.metrics_http import (
    BoundedHTTPServer,
    split_listen,
    start_http_server,
)
from fedgrpc.coordinator.runtime import CoordinatorRuntime
from fedgrpc.coordinator.services.http_access import COOKIE, HttpAccess
from fedgrpc.coordinator.services.status_feed import LoopUnavailableError, StatusFeed
from fedgrpc.errors import ConfigError
from fedgrpc.log import get_logger

log = get_logger(__name__)
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
"""Every file the page needs, shipped in the package (no CDN, no build step)."""
_PAGE_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
     "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]  # fmt: skip
"""Page and API responses: nothing from elsewhere runs, nothing is cached,
and the address (which may have held `?token=`) is never sent onwards."""
_STATUS_TEXT = {
    200: "200 OK", 303: "303 See Other", 401: "401 Unauthorized",
    404: "404 Not Found", 405: "405 Method Not Allowed",
    503: "503 Service Unavailable",
}  # fmt: skip
Headers = list[tuple[str, str]]
_API = ("/metrics", "/api/v1/status", "/api/v1/events")


def _load_assets() -> dict[str, bytes]:
    """The dashboard's files, read once from the package."""
    folder = resources.files("fedgrpc.coordinator").joinpath("dashboard")
    return {
        path: folder.joinpath(name).read_bytes() for path, (name, _) in ASSETS.items()
    }


class DashboardApp:
    """The WSGI application: routes, credential checks, answers."""

    def __init__(
        self, feed: StatusFeed, access: HttpAccess, metrics: WSGIApplication
    ) -> None:
        self.feed = feed
        self.access = access
        self.metrics = metrics
        self.assets = _load_assets()
        self._probes: dict[str, Callable[[], tuple[int, str]]] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
        }

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Route one request."""
        path = str(environ.get("PATH_INFO", "")) or "/"
        method = str(environ.get("REQUEST_METHOD", "GET"))
        known = path in self._probes or path in ASSETS or path in _API
        if not known:
            return _text(start_response, 404, f"no such path: {path[:200]}; see "
                         "README 'Dashboard' for the endpoints")  # fmt: skip
        if method not in ("GET", "HEAD") or (
            method == "HEAD" and path == "/api/v1/events"  # a stream, no head
        ):
            allow = "GET" if path == "/api/v1/events" else "GET, HEAD"
            return _text(start_response, 405, f"{method[:20]} not allowed here: "
                         "this server is read-only", [("Allow", allow)])  # fmt: skip
        if path == "/metrics":
            return self.metrics(environ, start_response)
        if path in self._probes:
            code, body = self._probes[path]()
            return _text(start_response, code, body)
        if path == "/" and "token" in parse_qs(str(environ.get("QUERY_STRING", ""))):
            return self._exchange_token(environ, start_response)
        refusal = self.access.refusal(environ)
        if refusal is not None:
            log.warning("dashboard_refused", path=path,
                        peer=str(environ.get("REMOTE_ADDR", "")))  # fmt: skip
            return _text(start_response, 401, refusal,
                         [("WWW-Authenticate", 'Bearer realm="fedgrpc"')])  # fmt: skip
        if path == "/api/v1/events":
            return self._events(start_response)
        if path == "/api/v1/status":
            return self._status(start_response)
        _, content_type = ASSETS[path]
        start_response("200 OK", [("Content-Type", content_type), *_PAGE_HEADERS])
        return [self.assets[path]]

    def _healthz(self) -> tuple[int, str]:
        problem = self.feed.alive()
        return (503, problem) if problem else (200, "ok")

    def _readyz(self) -> tuple[int, str]:
        problem = self.feed.readiness()
        return (503, problem) if problem else (200, "ready")

    def _status(self, start_response: StartResponse) -> Iterable[bytes]:
        try:
            body = self.feed.snapshot()
        except LoopUnavailableError as exc:
            return _text(start_response, 503, str(exc))
        start_response("200 OK", [("Content-Type", "application/json"),
                                  *_PAGE_HEADERS])  # fmt: skip
        return [body]

    def _events(self, start_response: StartResponse) -> Iterable[bytes]:
        stream = self.feed.subscribe()
        if stream is None:
            return _text(start_response, 503, f"{self.feed.max_streams} event "
                         "streams are open (http_max_event_streams): close a "
                         "dashboard tab or raise the limit",
                         [("Retry-After", "30")])  # fmt: skip
        try:
            first = self.feed.snapshot()
        except LoopUnavailableError as exc:
            stream.cancel()  # never iterated: free its slot now
            return _text(start_response, 503, str(exc))
        start_response("200 OK", [("Content-Type", "text/event-stream"),
                                  *_PAGE_HEADERS])  # fmt: skip
        return stream.events(first, self.feed.keepalive_s)

    def _exchange_token(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """`/?token=T`: a cookie for the right token and a redirect to `/`."""
        given = parse_qs(str(environ.get("QUERY_STRING", "")))["token"][0]
        if not self.access.token_matches(given):
            log.warning("dashboard_refused", path="/?token",
                        peer=str(environ.get("REMOTE_ADDR", "")))  # fmt: skip
            return _text(start_response, 401, "the token in the link is not this "
                         "coordinator's admin token (admin_token_file)")  # fmt: skip
        cookie = (
            f"{COOKIE}={self.access.cookie_value}; HttpOnly; SameSite=Strict; Path=/"
        )
        start_response("303 See Other", [("Location", "/"), ("Set-Cookie", cookie),
                                         *_PAGE_HEADERS])  # fmt: skip
        return [b""]


def _text(
    start_response: StartResponse, code: int, body: str, headers: Headers | None = None
) -> list[bytes]:
    """A plain-text answer (every error says what to do)."""
    start_response(_STATUS_TEXT[code], [("Content-Type", "text/plain; charset=utf-8"),
                   ("Cache-Control", "no-store"), *(headers or [])])  # fmt: skip
    return [(body + "\n").encode()]


@dataclass
class DashboardServer:
    """The running HTTP server and its feed."""

    server: BoundedHTTPServer
    feed: StatusFeed
    address: str
    """host:port bound (the real port when `http_listen` asked for 0)."""

    @property
    def url(self) -> str:
        """The dashboard's address (no credential in it)."""
        host, port = split_listen(self.address)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"

    async def stop(self) -> None:
        """Stop the feed (its streams end), then the server."""
        await self.feed.stop()
        await asyncio.to_thread(self.server.shutdown)
        self.server.server_close()


def start_dashboard(
    config: CoordinatorConfig, runtime: CoordinatorRuntime
) -> DashboardServer:
    """Serve `http_listen` for `runtime` (call on its event loop).

    Raises:
        ConfigError: the address cannot be bound, or the token file is unusable.
    """
    access = HttpAccess.from_config(config)
    feed = StatusFeed(
        runtime, asyncio.get_running_loop(), config.http_max_event_streams
    )
    app = DashboardApp(feed, access, make_wsgi_app(runtime.metrics.registry))
    try:
        host, port = split_listen(config.http_listen)
        server = start_http_server(
            host, port, app, read_timeout_s=config.http_read_timeout_s,
            max_connections=config.http_max_connections, name="fedgrpc-http",
        )  # fmt: skip
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"http_listen={config.http_listen!r} cannot be bound: {exc}; is "
            "another process using the port? use port 0 to pick a free one"
        ) from exc
    feed.start()
    dashboard = DashboardServer(server, feed, f"{host}:{server.server_port}")
    if access.mode == "open":
        log.warning("dashboard_open", detail="anyone who can connect reads "
                    "client ids, names and losses")  # fmt: skip
    hint = "open URL?token=<admin token> once" if access.token else ""
    log.info("dashboard_serving", url=dashboard.url, access=access.mode, hint=hint)
    return dashboard
