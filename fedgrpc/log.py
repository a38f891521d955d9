"""Structured logging: one way to get a logger, one place to configure output.

Library code calls `get_logger(__name__)` and logs constant snake_case events
with key=value fields (`round`, `client`, `bytes`, ...). It never configures
logging itself, so an embedded client obeys the host application's handlers
and prints nothing unless asked. Only the CLI calls `configure_logging`.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any, Literal

import structlog

logging.getLogger("fedgrpc").addHandler(logging.NullHandler())

_SHARED_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]

structlog.configure(
    processors=[
        *_SHARED_PROCESSORS,
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
    cache_logger_on_first_use=True,
)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """Return a structlog logger backed by the stdlib logger `name`."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


def _finite_or_null(
    _logger: Any, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Non-finite float fields become null: JSON lines must stay strict JSON.

    `json.dumps` writes NaN and Infinity, which no strict parser (jq, Go,
    Loki) reads; a client's loss is a claim and may be either. Only
    top-level fields are looked at (events are flat key=value).
    """
    for key, value in event.items():
        if isinstance(value, float) and not math.isfinite(value):
            event[key] = None
    return event


def configure_logging(
    fmt: Literal["json", "console"] = "console",
    level: str = "INFO",
) -> None:
    """Send fedgrpc's (and everyone's) records to stderr as JSON or console text.

    For the CLI only: JSON lines for `fedgrpc serve` (machine-readable in
    journald/Docker), human-readable console text for `fedgrpc simulate`.
    """
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _finite_or_null,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
