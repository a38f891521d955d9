"""File checks and TOML loading shared by the configuration objects.

Both `CoordinatorConfig` and `ClientConfig` validate TLS pairs and readable
paths the same way and load their table the same way; these live here so
each config module holds one object and its own rules.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from fedgrpc.errors import ConfigError
from fedgrpc.errors import check_config as _check


def is_hex(text: str) -> bool:
    """True if `text` is hexadecimal (a key fingerprint, say)."""
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def check_tls_pair(cert: str, key: str) -> None:
    """A certificate and its key come together, or TLS is off."""
    _check(bool(key) or not cert, "tls_key", key,
           f"the private key of tls_cert={cert!r} (set both or neither)")  # fmt: skip
    _check(bool(cert) or not key, "tls_cert", cert,
           f"the certificate of tls_key={key!r} (set both or neither)")  # fmt: skip


def check_readable(**paths: str) -> None:
    """Fail at construction, naming the option, if a set path cannot be read.

    Only readability: `fedgrpc.crypto.tls` parses the PEM when the server
    or channel is built, where the certificate and key are needed anyway.
    """
    for option, path in paths.items():
        if not path:
            continue
        try:
            with Path(path).open("rb"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"{option}={path!r} cannot be read: {exc.strerror or exc}"
            ) from exc


def load_table(path: str | Path, table: str, cls: type) -> dict[str, Any]:
    """Read `[table]` from a TOML file, rejecting unknown keys by name."""
    try:
        with Path(path).open("rb") as fh:
            document = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    values = document.get(table, {})
    if not isinstance(values, dict):
        raise ConfigError(f"[{table}] in {path} must be a table")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} in [{table}] of {path}; "
            f"known keys: {', '.join(sorted(known))}"
        )
    return dict(values)
