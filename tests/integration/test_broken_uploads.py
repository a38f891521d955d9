"""A broken upload costs its round nothing; a client that keeps breaking sits out.

Issue 13, A.3. Each update in flight is staged apart from the round's sum
and folded in only at its commit (`fedgrpc.aggregate.staged`), so a client
that sends two validly signed chunks and then cuts its stream (half-closed
without a commit, or the RPC cancelled) no longer voids the round: the
round applies the complete updates, bit for bit as if the cut one never
came. A client that does it `max_broken_uploads` times within
`broken_upload_window_rounds` rounds is refused for `exclusion_rounds`
rounds, visibly in GetStatus.

Real coordinator on 127.0.0.1:0, raw stubs (`tests.helpers.raw`) for the
hostile client and the honest ones, real signatures.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from fedgrpc._proto.v1 import admin_pb2
from fedgrpc.cli_ops import format_status
from fedgrpc.client.admin import fetch_status
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from tests.helpers import eventually
from tests.helpers.raw import (
    PB,
    Joined,
    Service,
    join,
    pull,
    stub,
    tiny_spec,
    update_messages,
)

N = 600
CHUNK = 256
"""Three chunks per update (256, 256, 88): a cut after two leaves one unsent."""
HONEST = ("h1", "h2", "h3")
Code = grpc.StatusCode


@dataclass
class Federation:
    coordinator: CoordinatorThread
    service: Service
    honest: list[Joined]
    breaker: Joined

    def status(self) -> admin_pb2.GetStatusResponse:
        return self.coordinator.status()

    def push(self, joined: Joined, values: np.ndarray, status: Any) -> None:
        messages = update_messages(
            joined, values, round_id=status.round_id,
            base_version=status.model_version, chunk_coords=CHUNK,
        )  # fmt: skip
        self.service.PushUpdate(messages, timeout=10)

    def in_flight_with_chunks(self) -> int:
        """Pushes of the open round that already handed chunks on (engine state)."""
        current = self.coordinator.running.runtime.engine.current
        if current is None:
            return 0
        return sum(t.touched_sum for t in list(current.streaming.values()))


@contextlib.contextmanager
def federation(**settings: Any) -> Iterator[Federation]:
    """Open enrollment, three honest clients and a breaker joined, zeros seeded."""
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=3,
        inner_steps=1,
        chunk_bytes=CHUNK * 4,
        outer_optimizer="fedavg",  # lr 1: new = base - mean of the updates
        **settings,
    )
    with serve_in_thread(config) as coordinator:
        channel, service = stub(coordinator.address)
        with channel:
            honest = [join(service, tiny_spec(N), name) for name in HONEST]
            breaker = join(service, tiny_spec(N), "breaker")
            seed = update_messages(
                honest[0], np.zeros(N, np.float32), round_id=0, base_version=0,
                initial=True, chunk_coords=CHUNK,
            )  # fmt: skip
            service.PushUpdate(seed, timeout=10)
            yield Federation(coordinator, service, honest, breaker)


def _header_and_two_chunks(fed: Federation, status: Any) -> list[Any]:
    values = np.full(N, 1e6, np.float32)  # would drag the mean far if it counted
    messages = update_messages(
        fed.breaker, values, round_id=status.round_id,
        base_version=status.model_version, chunk_coords=CHUNK, commit=False,
    )  # fmt: skip
    return list(messages)[:3]


Refusal = tuple[grpc.StatusCode, str]


def cut_by_half_close(fed: Federation, status: Any) -> Refusal:
    """Two signed chunks, then the stream ends without its commit."""
    try:
        fed.service.PushUpdate(iter(_header_and_two_chunks(fed, status)), timeout=10)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    raise AssertionError("a push without its commit was accepted")


def cut_by_cancel(fed: Federation, status: Any) -> Refusal:
    """Two signed chunks, then the RPC is cancelled once they reached the round."""
    release = threading.Event()

    def requests() -> Iterator[Any]:
        yield from _header_and_two_chunks(fed, status)
        release.wait(timeout=30)

    before = fed.in_flight_with_chunks()
    call = fed.service.PushUpdate.future(requests(), timeout=30)
    eventually(
        lambda: fed.in_flight_with_chunks() > before or call.done(),
        timeout_s=20, message="the cut push's chunks never reached the round",
    )  # fmt: skip
    call.cancel()
    release.set()
    eventually(
        lambda: fed.in_flight_with_chunks() == before,
        timeout_s=20, message="the cancelled push was never abandoned",
    )  # fmt: skip
    try:
        call.result()
    except grpc.FutureCancelledError:
        return grpc.StatusCode.CANCELLED, "cancelled by the client"
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    raise AssertionError("a cancelled push was accepted")


def _next_round(fed: Federation, round_id: int) -> admin_pb2.GetStatusResponse:
    def closed() -> admin_pb2.GetStatusResponse | None:
        status = fed.status()
        return status if status.round_id > round_id else None

    after = eventually(closed, timeout_s=30, message=f"round {round_id} never closed")
    assert after is not None
    return after


def test_one_of_four_cutting_every_upload_leaves_90_percent_of_rounds_applied() -> None:
    rounds = 10
    with federation(round_timeout_s=5.0) as fed:
        rng = np.random.default_rng(13)
        refused_while_excluded = 0
        for r in range(rounds):
            status = fed.status()
            cut = cut_by_cancel if r % 2 else cut_by_half_close
            me = next(c for c in status.clients if c.client_id == fed.breaker.client_id)
            if me.excluded_until_round > status.round_id:
                code, details = cut_by_half_close(fed, status)
                assert code == grpc.StatusCode.FAILED_PRECONDITION, details
                assert "max_broken_uploads" in details
                refused_while_excluded += 1
                shown = format_status("here", fetch_status(fed.coordinator.address))
                assert (
                    f"{fed.breaker.client_id} excluded until round "
                    f"{me.excluded_until_round}: 3 broken uploads"
                ) in shown
            else:
                code, details = cut(fed, status)
                assert code in (grpc.StatusCode.DATA_LOSS, Code.CANCELLED), details
            for joined in fed.honest:
                fed.push(joined, rng.standard_normal(N).astype(np.float32), status)
            _next_round(fed, status.round_id)

        final = fed.status()
        outcomes = [r.outcome for r in final.recent_rounds]
        applied = outcomes.count(PB.ROUND_OUTCOME_APPLIED)
        assert len(outcomes) == rounds
        assert applied >= 0.9 * rounds, [r.reason for r in final.recent_rounds]
        assert final.model_version == applied
        # Three breaks (default max_broken_uploads) exclude it for 5 rounds.
        assert refused_while_excluded >= 4
        breaker = next(c for c in final.clients if c.client_id == fed.breaker.client_id)
        assert breaker.updates_accepted == 0


def _three_honest_rounds(fed: Federation, cut: bool) -> tuple[bytes, np.ndarray]:
    """One round of three fixed honest updates, after a cut push if `cut`."""
    status = fed.status()
    if cut:
        code, details = cut_by_half_close(fed, status)
        assert code == grpc.StatusCode.DATA_LOSS, details
    rng = np.random.default_rng(7)
    updates = [
        (rng.standard_normal(N) * 10.0 ** rng.integers(-4, 6)).astype(np.float32)
        for _ in fed.honest
    ]
    for joined, values in zip(fed.honest, updates, strict=True):
        fed.push(joined, values, status)
    after = _next_round(fed, status.round_id)
    assert after.recent_rounds[-1].outcome == PB.ROUND_OUTCOME_APPLIED
    version, weights = pull(fed.service, fed.honest[0], min_version=1)
    assert version == 1
    mean = (updates[0] + updates[1] + updates[2]) / np.float32(3)
    np.testing.assert_allclose(weights, -mean, rtol=1e-6, atol=1e-6)
    return after.model_sha256, weights


def test_after_a_cut_update_the_model_is_exactly_the_complete_updates_mean() -> None:
    with federation() as fed:
        with_cut, weights = _three_honest_rounds(fed, cut=True)
    with federation() as twin:  # the same round where nobody cut anything
        without_cut, twin_weights = _three_honest_rounds(twin, cut=False)
    assert with_cut == without_cut
    assert np.array_equal(weights, twin_weights)
