"""`fedgrpc.log`: JSON log lines stay strict JSON whatever a client claims."""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Iterator

import pytest

from fedgrpc.log import configure_logging, get_logger


def _refuse(constant: str) -> float:
    raise AssertionError(f"not strict JSON: {constant}")


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("json", "INFO")
    stream = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    yield stream
    root.handlers, root.level = saved[0], saved[1]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_number_is_logged_as_null(
    json_lines: io.StringIO, value: float
) -> None:
    get_logger("fedgrpc.test").info("round_closed", train_loss=value, round=3)
    line = json_lines.getvalue().strip()
    event = json.loads(line, parse_constant=_refuse)
    assert event["train_loss"] is None
    assert event["round"] == 3
