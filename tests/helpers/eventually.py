"""Bounded polling instead of sleeps (STYLE.md 3.10, Temporal's assert_eventually).

A test that waits for something asynchronous (a server to be ready, a round to
close) polls a predicate until it holds or a deadline passes, so it is as fast
as the system allows and still fails with a message instead of hanging.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

T = TypeVar("T")

_NOT_YET = "condition did not become true"


def _failure(message: str, timeout_s: float, last_error: AssertionError | None) -> str:
    text = f"{message or _NOT_YET} within {timeout_s} s"
    return f"{text}; last assertion: {last_error}" if last_error else text


def eventually(
    predicate: Callable[[], T],
    timeout_s: float = 10.0,
    interval_s: float = 0.05,
    message: str = "",
) -> T:
    """Call `predicate` until it returns something truthy; return that value.

    An `AssertionError` raised by the predicate counts as "not yet", so the
    predicate may use plain asserts; other exceptions propagate at once.

    Raises:
        AssertionError: the predicate never held within `timeout_s` seconds.
    """
    deadline = time.monotonic() + timeout_s
    last_error: AssertionError | None = None
    while True:
        try:
            if value := predicate():
                return value
        except AssertionError as exc:
            last_error = exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(_failure(message, timeout_s, last_error))
        time.sleep(min(interval_s, remaining))


async def async_eventually(
    predicate: Callable[[], T | Awaitable[T]],
    timeout_s: float = 10.0,
    interval_s: float = 0.05,
    message: str = "",
) -> T:
    """`eventually` for asyncio tests; `predicate` may be sync or async.

    Sleeps with `asyncio.sleep`, so the servers and clients under test keep
    running on the same event loop while we wait.
    """
    deadline = time.monotonic() + timeout_s
    last_error: AssertionError | None = None
    while True:
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            # Awaited above, so what is left is the T the predicate produced.
            if value := cast(T, result):
                return value
        except AssertionError as exc:
            last_error = exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(_failure(message, timeout_s, last_error))
        await asyncio.sleep(min(interval_s, remaining))
