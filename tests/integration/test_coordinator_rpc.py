"""The coordinator against its contract, through raw generated stubs.

A real grpc.aio server on 127.0.0.1 port 0; the fedgrpc client is not
involved, so these tests pin the wire behaviour other languages rely on.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch

from fedgrpc._proto.v1 import admin_pb2, admin_pb2_grpc
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from tests.helpers import eventually
from tests.helpers.raw import PB, join, pull, stub, tiny_spec, update_messages

N = 10


@pytest.fixture
def coordinator() -> Iterator[CoordinatorThread]:
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=2,
        inner_steps=5,
        chunk_bytes=1024,
        weighting="samples",  # plain FedAvg: a 1-sample and a 3-sample client
        # One client breaks many uploads on purpose here; excluding it for
        # that is tested in test_broken_uploads.
        max_broken_uploads=0,
    )
    with serve_in_thread(config) as running:
        yield running


def _seed(service, joined, values):  # type: ignore[no-untyped-def]
    return service.PushUpdate(
        update_messages(joined, values, round_id=0, base_version=0, initial=True),
        timeout=10,
    )


def _reference_nesterov(initial: np.ndarray, grads: list[np.ndarray]) -> np.ndarray:
    param = torch.nn.Parameter(torch.tensor(initial))
    optimizer = torch.optim.SGD([param], lr=0.7, momentum=0.9, nesterov=True)
    for grad in grads:
        param.grad = torch.tensor(grad)
        optimizer.step()
    return param.detach().numpy()


def test_seed_push_apply_pull_matches_torch_nesterov(
    coordinator: CoordinatorThread,
) -> None:
    channel, service = stub(coordinator.address)
    with channel:
        a = join(service, tiny_spec(N), "a")
        b = join(service, tiny_spec(N), "b")
        assert a.seed_model  # no model yet: the first joiner is asked to seed
        assert not b.seed_model  # one seeder at a time; b pulls once seeded
        assert a.round_config.outer_lr == pytest.approx(0.7)
        initial = np.linspace(-1, 1, N).astype(np.float32)
        _seed(service, a, initial)
        with pytest.raises(grpc.RpcError) as second_seed:
            _seed(service, b, initial + 1)
        assert second_seed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        version, weights = pull(service, b)
        assert version == 0
        np.testing.assert_array_equal(weights, initial)

        rng = np.random.default_rng(0)
        expected_grads = []
        for round_id in (1, 2):
            ga = rng.standard_normal(N).astype(np.float32)
            gb = rng.standard_normal(N).astype(np.float32)
            # Sample-weighted mean: a trained on 1 sample, b on 3.
            expected_grads.append((ga * 1 + gb * 3) / 4)
            base = round_id - 1
            reply = service.PushUpdate(
                update_messages(a, ga, round_id=round_id, base_version=base), timeout=10
            )
            assert reply.updates_in_round == 1
            assert reply.bytes_received == N * 4
            service.PushUpdate(
                update_messages(
                    b, gb, round_id=round_id, base_version=base, num_samples=3
                ),
                timeout=10,
            )
            version, weights = pull(service, a, min_version=round_id)
            assert version == round_id
        np.testing.assert_allclose(
            weights, _reference_nesterov(initial, expected_grads), rtol=1e-6, atol=1e-6
        )
        status = admin_pb2_grpc.AdminServiceStub(channel).GetStatus(
            admin_pb2.GetStatusRequest(), timeout=10
        )
        assert status.model_version == 2
        assert [r.num_updates for r in status.recent_rounds] == [2, 2]
        assert status.num_parameters == N
        for done in status.recent_rounds:  # both windows were measured
            assert done.ingest_s > 0
            assert done.bytes_received == 2 * N * 4
            assert 0 < done.ingest_cpu_s < 60


def _expect(code: grpc.StatusCode, call, fragment: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    assert fragment in (info.value.details() or "")


def test_rejections_never_corrupt_the_weights(coordinator: CoordinatorThread) -> None:
    code = grpc.StatusCode
    channel, service = stub(coordinator.address)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    with channel:
        a = join(service, tiny_spec(N), "a")
        b = join(service, tiny_spec(N), "b")
        initial = np.zeros(N, dtype=np.float32)
        _seed(service, a, initial)
        good = np.ones(N, dtype=np.float32)

        def push(joined, values, round_id=1, base=0, **kw):  # type: ignore[no-untyped-def]
            return lambda: service.PushUpdate(
                update_messages(
                    joined, values, round_id=round_id, base_version=base, **kw
                ),
                timeout=10,
            )

        other = ModelSpec((TensorSpec("w", (N + 1,), DType.FLOAT32),))
        _expect(
            code.INVALID_ARGUMENT, lambda: join(service, other), "federation's model"
        )
        _expect(
            code.FAILED_PRECONDITION,
            lambda: join(service, tiny_spec(N), inner_steps=7),
            "inner_steps=5",
        )
        forged = a.with_token(b"x" * 16)
        _expect(code.UNAUTHENTICATED, push(forged, good), "session token")
        _expect(code.INVALID_ARGUMENT, push(a, np.ones(N + 2)), "coordinates")
        _expect(code.FAILED_PRECONDITION, push(a, good, round_id=5), "round 1")
        _expect(code.FAILED_PRECONDITION, push(a, good, base=3), "version")
        nan_first = good.copy()
        nan_first[0] = np.nan  # caught in the first chunk: nothing reached the sum
        _expect(code.INVALID_ARGUMENT, push(a, nan_first), "NaN")
        header = next(iter(update_messages(a, good, round_id=1, base_version=0)))
        oversized = PB.PushUpdateRequest(
            chunk=PB.UpdateChunk(seq=0, offset=0, count=N, payload=b"\0" * 8192)
        )  # 8 KiB > chunk_bytes (1 KiB) + 4 KiB framing
        _expect(
            code.RESOURCE_EXHAUSTED,
            lambda: service.PushUpdate(iter([header, oversized]), timeout=10),
            "",
        )

        # Nothing above reached round 1's sum: two good updates give the exact step.
        service.PushUpdate(update_messages(a, good, round_id=1, base_version=0))
        _expect(code.FAILED_PRECONDITION, push(a, good), "already sent")
        service.PushUpdate(update_messages(b, 3 * good, round_id=1, base_version=0))
        version, weights = pull(service, b, min_version=1)
        assert version == 1
        expected = _reference_nesterov(initial, [2 * good])
        np.testing.assert_allclose(weights, expected)

        # Round 2: failures after chunks reached the round drop only that
        # update (it was staged apart); the round stays open and is exact.
        nan_late = good.copy()
        nan_late[7] = np.nan  # chunk 1 of 3: chunk 0 was already staged
        _expect(code.INVALID_ARGUMENT, push(a, nan_late, 2, 1), "NaN")
        _expect(code.DATA_LOSS, push(a, good, 2, 1, commit=False), "commit")
        assert len(_status(admin).recent_rounds) == 1
        assert _status(admin).model_version == 1
        service.PushUpdate(update_messages(a, good, round_id=2, base_version=1))
        service.PushUpdate(update_messages(b, good, round_id=2, base_version=1))
        version, weights = pull(service, b, min_version=2)
        assert version == 2
        np.testing.assert_allclose(
            weights, _reference_nesterov(initial, [2 * good, good]), rtol=1e-6
        )


def _status(admin):  # type: ignore[no-untyped-def]
    return admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=10)


def test_health_and_reflection_are_served() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    config = CoordinatorConfig(
        seed_from_first_client=True, listen="127.0.0.1:0", open_enrollment=True,
        reflection=True,  # off by default (test_admin_access)
    )  # fmt: skip
    with (
        serve_in_thread(config) as coordinator,
        grpc.insecure_channel(coordinator.address) as channel,
    ):
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="fedgrpc.v1.CoordinatorService"),
            timeout=10,
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(
            channel
        ).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert {"fedgrpc.v1.CoordinatorService", "fedgrpc.v1.AdminService"} <= names


def _session_requests(joined, stop):  # type: ignore[no-untyped-def]
    yield PB.SessionRequest(
        open=PB.SessionOpen(
            client_id=joined.client_id, session_token=joined.session_token
        )
    )
    stop.wait(30)  # then no heartbeat at all


def test_silent_session_is_evicted_and_round_stops_waiting() -> None:
    import threading

    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=1,
        heartbeat_interval_s=0.1,
        session_timeout_s=0.5,
    )
    stop = threading.Event()
    with serve_in_thread(config) as running:
        channel, service = stub(running.address)
        with channel:
            a = join(service, tiny_spec(N), "a")
            _seed(service, a, np.zeros(N, dtype=np.float32))
            responses = service.Session(_session_requests(a, stop), timeout=20)
            first = next(responses)
            assert first.round_started.round_id == 1
            with pytest.raises(grpc.RpcError) as ended:
                list(responses)
            stop.set()
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "no heartbeat" in (ended.value.details() or "")
            # The stream ends before the handler's cleanup runs: wait for it.
            eventually(
                lambda: [c.connected for c in running.status().clients] == [False],
                timeout_s=10,
                message="the evicted client still counts as connected",
            )


def test_shutdown_notice_reaches_open_sessions() -> None:
    import threading

    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=1,
    )
    stop = threading.Event()
    running = CoordinatorThread(config).start()
    try:
        channel, service = stub(running.address)
        with channel:
            a = join(service, tiny_spec(N), "a")
            responses = service.Session(_session_requests(a, stop), timeout=20)
            threading.Timer(0.3, running.stop).start()
            kinds = [r.WhichOneof("event") for r in responses]
            assert kinds[-1] == "shutdown"
    finally:
        stop.set()
        running.stop()


def test_a_client_heartbeat_is_answered_on_the_session_stream() -> None:
    import threading
    import time

    def requests(joined, stop):  # type: ignore[no-untyped-def]
        yield PB.SessionRequest(
            open=PB.SessionOpen(
                client_id=joined.client_id, session_token=joined.session_token
            )
        )
        yield PB.SessionRequest(heartbeat=PB.Heartbeat(sent_unix_s=time.time()))
        stop.wait(30)

    config = CoordinatorConfig(
        seed_from_first_client=True, listen="127.0.0.1:0", open_enrollment=True
    )
    stop = threading.Event()
    with serve_in_thread(config) as running:
        channel, service = stub(running.address)
        with channel:
            a = join(service, tiny_spec(N), "a")
            before = time.time()
            responses = service.Session(requests(a, stop), timeout=20)

            reply = next(responses)  # unseeded: no round yet, so the reply first
            stop.set()
            responses.cancel()

    assert reply.WhichOneof("event") == "heartbeat"
    assert reply.heartbeat.sent_unix_s >= before


def test_round_started_is_sent_again_with_its_deadline_after_the_first_update() -> None:
    import threading
    import time

    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=2,
        round_timeout_s=100,
    )
    stop = threading.Event()
    with serve_in_thread(config) as running:
        channel, service = stub(running.address)
        with channel:
            a = join(service, tiny_spec(N), "a")
            _seed(service, a, np.zeros(N, dtype=np.float32))
            responses = service.Session(_session_requests(a, stop), timeout=20)
            opened = next(responses).round_started

            before = time.time()
            service.PushUpdate(
                update_messages(a, np.ones(N, np.float32), round_id=1, base_version=0),
                timeout=10,
            )
            again = next(responses).round_started
            stop.set()
            responses.cancel()

    assert (opened.round_id, opened.deadline_unix_s) == (1, 0.0)
    assert (again.round_id, again.round_nonce) == (1, opened.round_nonce)
    assert before + 90 < again.deadline_unix_s < time.time() + 100
