"""BackgroundLoop (the client's one sync/async boundary) and Join's retry loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest

from fedgrpc import errors
from fedgrpc.client.connection.boundary import BackgroundLoop
from fedgrpc.client.connection.channel import retry_unavailable


@pytest.fixture
def loop() -> Iterator[BackgroundLoop]:
    background = BackgroundLoop(name="test-loop")
    background.start()
    yield background
    background.close()


def _rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details
    )


def test_run_returns_the_result_computed_on_the_loop_thread(
    loop: BackgroundLoop,
) -> None:
    async def where() -> str:
        await asyncio.sleep(0)
        return threading.current_thread().name

    assert loop.run(where(), timeout=5) == "test-loop"


def test_run_propagates_the_coroutine_exception(loop: BackgroundLoop) -> None:
    async def fail() -> None:
        raise errors.WrongRoundError("closed")

    with pytest.raises(errors.WrongRoundError, match="closed"):
        loop.run(fail(), timeout=5)


def test_run_timeout_cancels_the_coroutine(loop: BackgroundLoop) -> None:
    cancelled = threading.Event()

    async def hang() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        loop.run(hang(), timeout=0.05)

    assert cancelled.wait(5)


def test_run_from_the_loop_thread_is_refused(loop: BackgroundLoop) -> None:
    async def nested() -> None:
        async def inner() -> None:
            return None

        loop.run(inner(), timeout=1)

    with pytest.raises(RuntimeError, match="own loop thread"):
        loop.run(nested(), timeout=5)


def test_close_is_idempotent_and_run_after_close_raises() -> None:
    background = BackgroundLoop()
    background.start()
    was_running = background.is_running

    background.close()
    background.close()

    assert (was_running, background.is_running) == (True, False)

    async def noop() -> None:
        return None

    with pytest.raises(RuntimeError, match="closed"):
        background.run(noop(), timeout=1)


def test_close_cancels_tasks_left_on_the_loop() -> None:
    background = BackgroundLoop()
    background.start()
    cancelled = threading.Event()

    async def orphan() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def spawn() -> None:
        asyncio.get_running_loop().create_task(orphan())
        await asyncio.sleep(0)

    background.run(spawn(), timeout=5)
    background.close()

    assert cancelled.is_set()


async def test_retry_unavailable_retries_until_the_call_succeeds() -> None:
    attempts: list[float] = []

    async def join(timeout_s: float) -> str:
        attempts.append(timeout_s)
        if len(attempts) < 3:
            raise _rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
        return "joined"

    result = await retry_unavailable(
        join, rpc="Join", target="x:1", connect_timeout_s=5, attempt_timeout_s=1
    )

    assert result == "joined"
    assert len(attempts) == 3
    assert all(0 < t <= 1 for t in attempts)


async def test_retry_unavailable_gives_up_after_the_connect_timeout() -> None:
    async def join(timeout_s: float) -> str:
        raise _rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")

    with pytest.raises(errors.CoordinatorUnavailableError, match="x:1") as raised:
        await retry_unavailable(
            join, rpc="Join", target="x:1", connect_timeout_s=0.2, attempt_timeout_s=1
        )

    assert "connection refused" in str(raised.value)


async def test_retry_unavailable_does_not_retry_other_codes() -> None:
    attempts = 0

    async def join(timeout_s: float) -> str:
        nonlocal attempts
        attempts += 1
        raise _rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "inner_steps differ")

    with pytest.raises(errors.IncompatibleClientError, match="inner_steps differ"):
        await retry_unavailable(
            join, rpc="Join", target="x:1", connect_timeout_s=5, attempt_timeout_s=1
        )

    assert attempts == 1


async def test_a_window_ending_inside_an_attempt_still_names_the_last_reason() -> None:
    """The last attempt, cut short by the window, times out: say why it failed."""
    attempts: list[float] = []

    async def join(timeout_s: float) -> str:
        attempts.append(timeout_s)
        if timeout_s < 1:  # only the window's remainder: the answer comes too late
            await asyncio.sleep(timeout_s)
            raise _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        await asyncio.sleep(0.15)  # a leaf answers once its root failed it
        raise _rpc_error(grpc.StatusCode.UNAVAILABLE, "this leaf cannot reach its root")

    with pytest.raises(
        errors.CoordinatorUnavailableError, match="cannot reach its root"
    ) as raised:
        await retry_unavailable(
            join, rpc="Join", target="x:1", connect_timeout_s=1.2, attempt_timeout_s=1
        )
    assert "the last cut off by that limit" in str(raised.value)
    assert attempts[0] == pytest.approx(1)  # the first attempt had a whole timeout
    assert attempts[-1] < 1


async def test_a_first_attempt_timing_out_is_not_called_unreachable() -> None:
    """With no UNAVAILABLE seen, a timeout is the call's own error, unchanged."""

    async def join(timeout_s: float) -> str:
        raise _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    with pytest.raises(errors.FedGrpcError, match="Deadline Exceeded") as raised:
        await retry_unavailable(
            join, rpc="Join", target="x:1", connect_timeout_s=0.5, attempt_timeout_s=1
        )
    assert "attempts" not in str(raised.value)
