"""`ClientConfig.proxy`: which HTTP CONNECT proxy a client dials through.

Clients only dial out, so a client behind a firewall that lets traffic out
only through a proxy needs nothing but that proxy's address: gRPC opens the
TCP connection to the proxy, sends `CONNECT coordinator-host:port`, and
speaks HTTP/2 (inside TLS, when `tls_ca` is set) through the tunnel.

gRPC's core reads the proxy URL itself and, given one it cannot parse
(no `http://` scheme, say), logs an error and connects *directly*: a typo
would silently bypass the proxy the operator asked for. So the URL is
checked here, at construction, and refused with a message naming the
option; only the `http` scheme exists (the proxy leg is plain HTTP, which
is what CONNECT proxies speak; the coordinator's TLS is end to end).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fedgrpc.errors import ConfigError

DIRECT = "direct"
"""`ClientConfig.proxy` value that turns proxies off, even from the environment."""
_EXPECTED = (
    "'' (gRPC's grpc_proxy / https_proxy / http_proxy environment variables "
    f"decide), {DIRECT!r} (no proxy, whatever the environment says) or an "
    "HTTP CONNECT proxy URL http://[user:password@]host:port"
)


def redact_proxy(proxy: str) -> str:
    """`proxy` with any password replaced by `***`, for logs and errors."""
    try:
        parts = urlsplit(proxy)
    except ValueError:
        return proxy
    if parts.password is None:
        return proxy
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def check_proxy(proxy: str) -> None:
    """Refuse a proxy setting gRPC would misread, naming what is accepted.

    Raises:
        ConfigError: not "", "direct" nor http://[user:password@]host:port
            (another scheme, no host, no or a bad port, a path or query).
    """
    if proxy in ("", DIRECT):
        return
    problem = _url_problem(proxy)
    if problem:
        raise ConfigError(
            f"proxy={redact_proxy(proxy)!r} is invalid ({problem}): expected "
            f"{_EXPECTED}"
        )


def _url_problem(proxy: str) -> str:
    """What is wrong with `proxy` as an HTTP proxy URL, or "" if nothing."""
    if "://" not in proxy:
        return "no scheme: write http://host:port"
    try:
        parts = urlsplit(proxy)
        port = parts.port
    except ValueError as exc:
        return str(exc)
    if parts.scheme != "http":
        # gRPC speaks plain HTTP to the proxy; it ignores an https:// URL.
        return f"the scheme must be http, not {parts.scheme!r}"
    if not parts.hostname:
        return "no proxy host"
    if port is None:
        return "no port"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "a proxy URL has no path, query or fragment"
    return ""
