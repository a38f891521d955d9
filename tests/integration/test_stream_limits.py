"""Every stream ends after a deadline and counts against a cap (issue 13, A.4).

Hostile streams through real stubs on a real coordinator: streams that never
send their first message, a push holding a signed header open, more streams
than a connection or the coordinator may hold, two seeding pushes at once,
and a pull that stops reading. Each must end with a clear status naming the
setting, and honest work must go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from fedgrpc._proto.v1 import coordinator_pb2_grpc
from fedgrpc.client.connection.push import push_method, stream_update
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from tests.helpers import eventually
from tests.helpers.federation import (
    N,
    closed_federation,
    complete_a_round,
    expect_status,
)
from tests.helpers.raw import (
    PB,
    Joined,
    UpdateParams,
    join,
    signed_header,
    stub,
    tiny_spec,
    update_messages,
)

Code = grpc.StatusCode
CLIENT_DEADLINE_S = 20.0
"""The test's own call deadline: far past every limit set here, so a
DEADLINE_EXCEEDED from the client side (today's behaviour) cannot pass."""


def _holding(stop: threading.Event, *first: Any) -> Iterator[Any]:
    """Send `first`, then hold the stream open (until `stop`, at most 60 s)."""
    yield from first
    stop.wait(60)


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    """Set at teardown, so held request streams let their threads go."""
    event = threading.Event()
    yield event
    event.set()


@contextlib.contextmanager
def own_connection(
    address: str,
) -> Iterator[coordinator_pb2_grpc.CoordinatorServiceStub]:
    """A stub on a connection of its own (grpc shares them between channels)."""
    channel = grpc.insecure_channel(
        address, options=[("grpc.use_local_subchannel_pool", 1)]
    )
    with channel:
        yield coordinator_pb2_grpc.CoordinatorServiceStub(channel)


def test_a_session_that_never_opens_ends_with_deadline_exceeded(
    tmp_path: Path, stop: threading.Event
) -> None:
    with closed_federation(tmp_path, first_message_timeout_s=0.5) as fed:
        responses = fed.service.Session(_holding(stop), timeout=CLIENT_DEADLINE_S)
        expect_status(
            lambda: next(responses), Code.DEADLINE_EXCEEDED, "first_message_timeout_s"
        )


def test_a_push_that_never_sends_its_header_ends_with_deadline_exceeded(
    tmp_path: Path, stop: threading.Event
) -> None:
    with closed_federation(tmp_path, first_message_timeout_s=0.5) as fed:
        expect_status(
            lambda: fed.service.PushUpdate(_holding(stop), timeout=CLIENT_DEADLINE_S),
            Code.DEADLINE_EXCEEDED,
            "first_message_timeout_s",
        )


def test_a_push_holding_its_signed_header_open_is_abandoned_and_the_round_goes_on(
    tmp_path: Path, stop: threading.Event
) -> None:
    with closed_federation(tmp_path, stream_idle_timeout_s=0.5) as fed:
        status = fed.status()
        header, _ = signed_header(
            fed.a, N, UpdateParams(status.round_id, status.model_version)
        )
        expect_status(
            lambda: fed.service.PushUpdate(
                _holding(stop, header), timeout=CLIENT_DEADLINE_S
            ),
            Code.DEADLINE_EXCEEDED,
            "stream_idle_timeout_s",
        )
        complete_a_round(fed)  # a may push again, and the round applies


def _held_sessions(
    stubs: list[coordinator_pb2_grpc.CoordinatorServiceStub], stop: threading.Event
) -> list[Any]:
    """One Session per stub that never opens (it holds a stream slot)."""
    return [s.Session(_holding(stop), timeout=CLIENT_DEADLINE_S) for s in stubs]


def _refused(calls: list[Any], fragment: str) -> list[Any]:
    """The calls that ended RESOURCE_EXHAUSTED naming `fragment`."""
    done = [c for c in calls if c.done()]
    for call in done:
        assert call.code() == Code.RESOURCE_EXHAUSTED, call.details()
        assert fragment in (call.details() or ""), call.details()
    return done


def test_streams_beyond_max_streams_per_connection_are_refused(
    tmp_path: Path, stop: threading.Event
) -> None:
    with (
        closed_federation(
            tmp_path, max_streams_per_connection=2, first_message_timeout_s=30
        ) as fed,
        own_connection(fed.coordinator.address) as service,
    ):
        calls = _held_sessions([service] * 3, stop)
        fragment = "max_streams_per_connection=2"
        refused = eventually(lambda: _refused(calls, fragment), CLIENT_DEADLINE_S)
        assert len(refused) == 1
        # Another connection is not affected, and honest work goes on.
        complete_a_round(fed)
        for call in calls:
            call.cancel()


def test_streams_beyond_max_streams_total_are_refused_across_connections(
    tmp_path: Path, stop: threading.Event
) -> None:
    with (
        closed_federation(
            tmp_path,
            max_streams_total=3,
            max_streams_per_connection=3,
            first_message_timeout_s=30,
        ) as fed,
        own_connection(fed.coordinator.address) as one,
        own_connection(fed.coordinator.address) as two,
    ):
        calls = _held_sessions([one, one, two, two], stop)
        refused = eventually(
            lambda: _refused(calls, "max_streams_total=3"), CLIENT_DEADLINE_S
        )
        assert len(refused) == 1
        for call in calls:
            call.cancel()
        # The slots come back once the streams end.
        eventually(lambda: _a_stream_is_admitted(fed.coordinator), CLIENT_DEADLINE_S)
        complete_a_round(fed)


def _a_stream_is_admitted(coordinator: CoordinatorThread) -> bool:
    """A fresh PullModel is not refused for want of a slot (it may be for
    its missing credentials: that is past the guard)."""
    with own_connection(coordinator.address) as service:
        try:
            list(service.PullModel(PB.PullModelRequest(), timeout=5))
        except grpc.RpcError as error:
            return error.code() != Code.RESOURCE_EXHAUSTED
    return True


@contextlib.contextmanager
def unseeded(**settings: Any) -> Iterator[CoordinatorThread]:
    """An open-enrollment coordinator waiting for a client to seed the model."""
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=2,
        inner_steps=5,
        outer_optimizer="fedavg",
        **settings,
    )
    with serve_in_thread(config) as coordinator:
        yield coordinator


def test_a_second_seeding_push_is_refused_while_one_is_staging(
    tmp_path: Path, stop: threading.Event
) -> None:
    n, chunk = 1024, 256
    with unseeded() as coordinator:
        channel, service = stub(coordinator.address)
        a, b = join(service, tiny_spec(n), "a"), join(service, tiny_spec(n), "b")
        messages = list(_seed(a, n, chunk))
        release = threading.Event()

        def first_then_rest() -> Iterator[Any]:
            yield from messages[:2]  # the header and one chunk: staging
            release.wait(60)
            yield from messages[2:]

        pending = service.PushUpdate.future(
            first_then_rest(), timeout=CLIENT_DEADLINE_S
        )
        ingest = coordinator.running.runtime.ingest
        eventually(lambda: ingest.seeding_pushes == 1, CLIENT_DEADLINE_S)
        expect_status(
            lambda: service.PushUpdate(_seed(b, n, chunk), timeout=CLIENT_DEADLINE_S),
            Code.RESOURCE_EXHAUSTED,
            "one seeding push at a time",
        )
        release.set()
        assert pending.result(timeout=CLIENT_DEADLINE_S).updates_in_round == 1
        assert coordinator.status().model_version == 0
        channel.close()


def _seed(joined: Joined, n: int, chunk: int) -> Iterator[Any]:
    return update_messages(
        joined, np.zeros(n, np.float32), round_id=0, base_version=0, initial=True,
        chunk_coords=chunk,
    )  # fmt: skip


def test_a_pull_that_stops_reading_is_cancelled_and_releases_its_version(
    tmp_path: Path,
) -> None:
    n, chunk = 1 << 20, 1 << 18  # 4 MiB of weights in 1 MiB chunks
    with unseeded(pull_timeout_s=1.0, chunk_bytes=chunk * 4) as coordinator:
        channel, service = stub(coordinator.address)
        with channel:
            a = join(service, tiny_spec(n), "a")
            service.PushUpdate(_seed(a, n, chunk), timeout=CLIENT_DEADLINE_S)
        # A small window that never grows: the server's writes block at once.
        slow = grpc.insecure_channel(
            coordinator.address,
            options=[
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.http2.bdp_probe", 0),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )
        with slow:
            stalled = coordinator_pb2_grpc.CoordinatorServiceStub(slow).PullModel(
                PB.PullModelRequest(
                    client_id=a.client_id, session_token=a.session_token
                ),
                timeout=3 * CLIENT_DEADLINE_S,  # never what ends it
            )
            assert next(stalled).WhichOneof("part") == "header"
            waiters = coordinator.running.runtime.waiters
            eventually(lambda: not waiters.pulls_active, CLIENT_DEADLINE_S)
            assert not stalled.done()  # type: ignore[attr-defined]  # a grpc.Future too
            stalled.cancel()


def test_a_client_push_slow_to_build_its_header_still_lands(tmp_path: Path) -> None:
    # A secure-aggregation client waits for its round's setup and masks its
    # whole vector before it has a header to send. The client must open the
    # stream only once that header exists, or the coordinator cuts it at
    # `first_message_timeout_s` (CI once saw exactly this, as an INTERNAL).
    with closed_federation(tmp_path, first_message_timeout_s=0.5) as fed:
        status = fed.status()
        params = UpdateParams(status.round_id, status.model_version)
        values = np.ones(N, dtype=np.float32)
        messages = list(
            update_messages(fed.a, values, round_id=params.round_id,
                            base_version=params.base_version, chunk_coords=4)
        )  # fmt: skip

        async def slow_to_start() -> AsyncIterator[Any]:
            await asyncio.sleep(1.5)  # three times the coordinator's limit
            for message in messages:
                yield message

        async def push() -> Any:
            async with grpc.aio.insecure_channel(fed.coordinator.address) as channel:
                return await stream_update(
                    push_method(channel), slow_to_start(), CLIENT_DEADLINE_S
                )

        response = asyncio.run(push())
        assert response.updates_in_round == 1
