"""Who may read the dashboard and `/api/v1/`: the admin credential, over HTTP.

The dashboard shows what GetStatus shows (client ids, names, losses, key
fingerprints), so it asks for the same credential as AdminService:

- the admin token (`admin_token_file`) as `Authorization: Bearer <token>`
  (curl, scripts), compared in constant time;
- in a browser, which cannot add a header to a page load or an
  EventSource: open `/?token=<token>` once. The server answers with a
  redirect to `/` (so the token leaves the address bar at once) and sets
  an HttpOnly, SameSite=Strict cookie holding HMAC-SHA256(token, a fixed
  label), not the token itself: script on the page cannot read it, other
  sites cannot make the browser send it, and a leaked cookie opens only
  the read-only dashboard, never AdminService (which needs the token).
  Rotating the token invalidates every cookie;
- with `admin_access = "loopback"` set explicitly, a request from a
  loopback address whose Host header names this host (`localhost`,
  `127.0.0.1`, `[::1]`). The Host check stops DNS rebinding: a web page
  the operator visits could otherwise resolve its own name to 127.0.0.1
  and read the dashboard through the operator's browser. `auto` resolving
  to loopback does not open the dashboard: the issue asks that the
  operator open it explicitly;
- with `admin_access = "open"`, anyone (warned at start).

Client certificates do not apply: this server speaks plain HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any

from fedgrpc.config import CoordinatorConfig
from fedgrpc.crypto.admin_token import BEARER, read_admin_token

COOKIE = "fedgrpc_dashboard"
_COOKIE_LABEL = b"fedgrpc dashboard cookie v1"
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
HOW = (
    "send the admin token as `Authorization: Bearer <token>`, or open "
    "/?token=<token> once in the browser (it sets a cookie); see README "
    "'Dashboard'"
)


@dataclass(frozen=True, slots=True)
class HttpAccess:
    """The resolved credential rules of the HTTP server."""

    mode: str
    """credential, loopback (explicit only) or open."""
    token: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: CoordinatorConfig) -> HttpAccess:
        """The rules `config` asks for; reads `admin_token_file`.

        Raises:
            ConfigError: the token file is unusable.
        """
        token = None
        if config.admin_token_file:
            token = read_admin_token(config.admin_token_file, "admin_token_file")
        mode = config.admin_access
        if mode == "auto":
            mode = "credential"
        return cls(mode, token)

    @property
    def cookie_value(self) -> str:
        """The cookie a browser holds after `/?token=` (empty without a token)."""
        if self.token is None:
            return ""
        return hmac.new(self.token, _COOKIE_LABEL, hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        """`given` is the admin token (constant time)."""
        return self.token is not None and hmac.compare_digest(
            given.encode("latin-1", "replace"), self.token
        )

    def refusal(self, environ: Mapping[str, Any]) -> str | None:
        """None if this request may read the dashboard, else why not (for a 401)."""
        if self.mode == "open":
            return None
        header = str(environ.get("HTTP_AUTHORIZATION", ""))
        if header:
            given = header[len(BEARER) :].strip() if header.startswith(BEARER) else ""
            if self.token_matches(given):
                return None
            reason = (
                "this coordinator has no admin token configured"
                if self.token is None
                else "the Authorization header does not carry the admin token"
            )
            return f"{reason}; {HOW}"
        cookie = _cookie(str(environ.get("HTTP_COOKIE", "")))
        if cookie and self.token is not None:
            if hmac.compare_digest(cookie, self.cookie_value):
                return None
            return f"the dashboard cookie is stale (the admin token changed); {HOW}"
        if self.mode == "loopback" and _local_request(environ):
            return None
        return f"the dashboard needs the admin credential; {HOW}"


def _cookie(header: str) -> str:
    """Our cookie's value in a Cookie header ("" if absent or unparsable)."""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return ""
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else ""


def _local_request(environ: Mapping[str, Any]) -> bool:
    """From a loopback address, addressed to a loopback name (no DNS rebinding)."""
    try:
        peer = ipaddress.ip_address(str(environ.get("REMOTE_ADDR", "")))
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped:
        peer = peer.ipv4_mapped
    host = str(environ.get("HTTP_HOST", ""))
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return peer.is_loopback and name.strip("[]").lower() in _LOCAL_HOSTS
