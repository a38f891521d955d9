"""The admin token: a shared secret that lets an operator call AdminService.

One line in a file the coordinator (`admin_token_file`) and `fedgrpc status`
(`--admin-token-file`) both read. Clients send it as gRPC metadata
`authorization: Bearer <token>`; the coordinator compares it in constant
time (`hmac.compare_digest`) so response timing says nothing about how much
of a guess was right. The token never appears in a repr or a log line.
"""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

from fedgrpc.crypto.files import read_file
from fedgrpc.errors import ConfigError, IdentityFileError
from fedgrpc.log import get_logger

log = get_logger(__name__)
MIN_TOKEN_CHARS = 16
"""Shortest token accepted: 16 random URL-safe characters are 96 bits."""
TOKEN_BYTES = 32
"""Entropy of a generated token (`new_admin_token`): 256 bits."""
METADATA_KEY = "authorization"
BEARER = "Bearer "


def new_admin_token() -> bytes:
    """A fresh random token (43 URL-safe characters) and a newline, for a file."""
    return secrets.token_urlsafe(TOKEN_BYTES).encode() + b"\n"


def read_admin_token(path: str, option: str) -> bytes:
    """The token in `path`: its first line, without surrounding whitespace.

    Warns (never fails) when the file is readable by group or others: the
    token is as good as the file's permissions.

    Raises:
        ConfigError: unreadable, empty, shorter than `MIN_TOKEN_CHARS`, or
            not printable ASCII (it travels as a gRPC metadata value); the
            message names `option` and the path, never the token.
    """
    try:
        data = read_file(path, "admin token file")
    except IdentityFileError as exc:
        raise ConfigError(f"{option}={path!r} is unusable: {exc}") from exc
    lines = data.strip().splitlines()
    token = lines[0].strip() if lines else b""
    if len(token) < MIN_TOKEN_CHARS or not all(0x21 <= b < 0x7F for b in token):
        raise ConfigError(
            f"{option}={path!r} must hold one line of at least {MIN_TOKEN_CHARS} "
            "printable characters without spaces (it is sent as gRPC metadata); "
            "`fedgrpc certs --admin` writes one"
        )
    if Path(path).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("admin_token_file_shared", option=option, path=path,
                    hint="chmod 600: others on this host can read it")  # fmt: skip
    return token


def bearer_metadata(token: bytes) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token` (for AdminService stubs)."""
    return ((METADATA_KEY, BEARER + token.decode("ascii")),)
