"""RoundTracker: the client's view of rounds, and waiting on it without races."""

from __future__ import annotations

import asyncio

import pytest

from fedgrpc import errors
from fedgrpc.client.connection.round_tracker import (
    MAX_CLOSED_ROUNDS,
    RoundEnd,
    RoundStart,
    RoundTracker,
    StaleBase,
)


def _closed(round_id: int, outcome: str = "applied", version: int = 1) -> RoundEnd:
    return RoundEnd(round_id, outcome, version, 2, "")  # type: ignore[arg-type]


async def test_wait_round_open_returns_a_round_that_started_before_the_wait() -> None:
    tracker = RoundTracker()
    await tracker.record_started(RoundStart(1, 0, 0.0))

    opened = await tracker.wait_round_open(0, timeout_s=1)

    assert opened == RoundStart(1, 0, 0.0)


async def test_wait_round_open_wakes_when_the_round_starts() -> None:
    tracker = RoundTracker()
    waiter = asyncio.create_task(tracker.wait_round_open(0, timeout_s=5))
    await asyncio.sleep(0.01)
    assert not waiter.done()

    await tracker.record_started(RoundStart(1, 0, 0.0))

    assert await waiter == RoundStart(1, 0, 0.0)


async def test_a_closed_round_is_not_open() -> None:
    tracker = RoundTracker()
    await tracker.record_started(RoundStart(1, 0, 0.0))
    await tracker.record_closed(_closed(1, "skipped", 0))

    assert tracker.open_round() is None
    with pytest.raises(errors.CoordinatorUnavailableError, match="waited"):
        await tracker.wait_round_open(0, timeout_s=0.05)


async def test_a_newer_applied_version_makes_the_caller_stale() -> None:
    tracker = RoundTracker()
    await tracker.record_started(RoundStart(1, 0, 0.0))
    await tracker.record_closed(_closed(1, "applied", 1))
    await tracker.record_started(RoundStart(2, 1, 0.0))

    assert await tracker.wait_round_open(0, timeout_s=1) == StaleBase(1)
    assert await tracker.wait_round_open(1, timeout_s=1) == RoundStart(2, 1, 0.0)


async def test_skipped_round_keeps_the_model_version() -> None:
    tracker = RoundTracker(model_version=3)

    await tracker.record_closed(_closed(4, "skipped", 3))

    assert tracker.model_version == 3


async def test_wait_round_closed_returns_the_outcome() -> None:
    tracker = RoundTracker()
    waiter = asyncio.create_task(tracker.wait_round_closed(5, timeout_s=5))
    await tracker.record_closed(_closed(4))
    await asyncio.sleep(0.01)
    assert not waiter.done()

    await tracker.record_closed(_closed(5, "applied", 2))

    assert await waiter == _closed(5, "applied", 2)
    assert tracker.model_version == 2


async def test_broken_stream_makes_waits_raise_unavailable_with_the_cause() -> None:
    tracker = RoundTracker()
    waiter = asyncio.create_task(tracker.wait_round_closed(1, timeout_s=5))
    cause = errors.CoordinatorUnavailableError("socket closed")

    await tracker.record_failure(cause)

    with pytest.raises(errors.CoordinatorUnavailableError, match="broke") as raised:
        await waiter
    assert raised.value.__cause__ is cause
    assert "socket closed" in str(raised.value)


async def test_result_already_known_wins_over_a_later_failure() -> None:
    tracker = RoundTracker()
    await tracker.record_closed(_closed(1))
    await tracker.record_failure(errors.CoordinatorUnavailableError("gone"))

    assert (await tracker.wait_round_closed(1, timeout_s=1)).round_id == 1


async def test_shutdown_notice_makes_waits_raise_shutting_down() -> None:
    tracker = RoundTracker()

    await tracker.record_shutdown("maintenance")

    with pytest.raises(errors.ShuttingDownError, match="maintenance"):
        await tracker.wait_round_open(0, timeout_s=1)


async def test_closed_rounds_are_bounded() -> None:
    tracker = RoundTracker()

    for round_id in range(1, MAX_CLOSED_ROUNDS + 11):
        await tracker.record_closed(_closed(round_id, "skipped", 0))

    assert len(tracker.closed) == MAX_CLOSED_ROUNDS
    assert min(tracker.closed) == 11


async def test_shutdown_wins_over_the_stream_ending_after_it() -> None:
    tracker = RoundTracker()
    await tracker.record_shutdown("maintenance")
    await tracker.record_failure(errors.CoordinatorUnavailableError("stream ended"))

    with pytest.raises(errors.ShuttingDownError, match="maintenance"):
        await tracker.wait_round_closed(1, timeout_s=1)
