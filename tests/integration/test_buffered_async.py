"""buffered_async (FedBuff) through real stubs: staleness scaling, its bound, K.

Three open-enrollment clients on a real coordinator with buffer_size 2,
max_staleness 1 and FedAvg at lr 1, so every applied version is exactly
base - (sum of s(tau_i) g_i) / 2 and any mistake in which updates a round
took, or how it scaled them, shows in the pulled weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.crypto.signing import sha256
from fedgrpc.wire.signed import commit_message
from tests.helpers.federation import CHUNK, N, expect_status
from tests.helpers.raw import (
    PB,
    Joined,
    Service,
    UpdateParams,
    join,
    signed_chunk,
    signed_header,
    stub,
    tiny_spec,
    update_messages,
)
from tests.helpers.raw import pull as raw_pull

Code = grpc.StatusCode


@dataclass
class Buffered:
    coordinator: CoordinatorThread
    service: Service
    clients: dict[str, Joined]
    shas: dict[int, bytes]
    """SHA-256 of each version's bytes, as pulled (what a stale update signs)."""

    def pull(self, min_version: int) -> tuple[int, np.ndarray]:
        version, values = raw_pull(self.service, self.clients["a"], min_version)
        self.shas[version] = sha256(values.astype("<f4").tobytes())
        return version, values

    def push(self, name: str, values: np.ndarray, base: int) -> PB.PushUpdateResponse:
        """A signed update of `name` from `base`, into the open round."""
        status = self.coordinator.status()
        params = UpdateParams(
            status.round_id,
            base,
            base_sha256=self.shas.get(base, bytes(32)),
            num_samples=1,
        )
        header, signer = signed_header(self.clients[name], values.size, params)
        flat = values.astype("<f4")
        messages = [header]
        for seq, start in enumerate(range(0, flat.size, CHUNK)):
            part = flat[start : start + CHUNK]
            messages.append(signed_chunk(signer, seq, start, part.size, part.tobytes()))
        messages.append(commit_message(signer))
        return self.service.PushUpdate(iter(messages), timeout=10)


@pytest.fixture
def buffered() -> Iterator[Buffered]:
    config = CoordinatorConfig(
        listen="127.0.0.1:0",
        seed_from_first_client=True,
        open_enrollment=True,
        min_clients=2,
        round_mode="buffered_async",
        buffer_size=2,
        max_staleness=1,
        staleness_exponent=0.5,
        outer_optimizer="fedavg",
        chunk_bytes=CHUNK * 4,
        round_timeout_s=60,
    )
    with serve_in_thread(config) as coordinator:
        channel, service = stub(coordinator.address)
        with channel:
            clients = {n: join(service, tiny_spec(N), n) for n in ("a", "b", "c")}
            seed = update_messages(
                clients["a"], np.zeros(N, np.float32), round_id=0, base_version=0,
                initial=True, chunk_coords=CHUNK,
            )  # fmt: skip
            service.PushUpdate(seed, timeout=10)
            fed = Buffered(coordinator, service, clients, {})
            fed.pull(0)
            yield fed


def _g(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(N).astype(np.float32)


def test_a_round_closes_at_buffer_size_and_a_stale_update_is_scaled(
    buffered: Buffered,
) -> None:
    # Round on v0: a and b fill the buffer (K = 2); c has not pushed.
    v0, w0 = buffered.pull(0)
    ga, gb = _g(1), _g(2)
    buffered.push("a", ga, v0)
    assert buffered.push("b", gb, v0).updates_in_round == 2
    v1, w1 = buffered.pull(v0 + 1)
    assert v1 == v0 + 1
    np.testing.assert_allclose(w1, w0 - (ga + gb) / 2, rtol=1e-6, atol=1e-6)
    status = buffered.coordinator.status()
    assert status.round_mode == "buffered_async"
    assert status.recent_rounds[-1].max_staleness == 0

    # Round on v1: a pushes from v1; c from v0, one version stale (tau = 1):
    # its values count s(1) = 1/sqrt(2), its weight in the mean stays 1.
    ga2, gc = _g(3), _g(4)
    buffered.push("a", ga2, v1)
    buffered.push("c", gc, v0)
    _v2, w2 = buffered.pull(v1 + 1)
    expected = w1 - (ga2 + gc / math.sqrt(2.0)) / 2
    np.testing.assert_allclose(w2, expected, rtol=1e-5, atol=1e-6)
    status = buffered.coordinator.status()
    assert status.recent_rounds[-1].max_staleness == 1
    # Per-client traffic: each update is N float32s up; every pull went to a.
    up = {c.name: c.bytes_received for c in status.clients}
    assert up == {"a": 2 * 4 * N, "b": 4 * N, "c": 4 * N}
    down = {c.name: c.bytes_sent for c in status.clients}
    assert down == {"a": status.bytes_sent, "b": 0, "c": 0}


def test_an_update_past_max_staleness_or_sent_twice_is_refused(
    buffered: Buffered,
) -> None:
    v0, _ = buffered.pull(0)
    buffered.push("a", _g(1), v0)
    buffered.push("b", _g(2), v0)
    v1, _ = buffered.pull(v0 + 1)
    buffered.push("a", _g(3), v1)
    buffered.push("b", _g(4), v1)
    v2, _ = buffered.pull(v1 + 1)
    before = buffered.coordinator.status()

    # c's base v0 is two versions behind the round's v2 (max_staleness 1).
    expect_status(lambda: buffered.push("c", _g(5), v0), Code.FAILED_PRECONDITION,
                  "max_staleness=1")  # fmt: skip
    # a had its update from v1 applied: another from v1 would count it twice.
    expect_status(lambda: buffered.push("a", _g(6), v1), Code.FAILED_PRECONDITION,
                  "count that progress twice")  # fmt: skip
    # A base newer than the round's is refused as before (no such version).
    expect_status(lambda: buffered.push("a", _g(7), v2 + 1),
                  Code.FAILED_PRECONDITION, "pull the latest model")  # fmt: skip

    # Nothing moved: same round, version, and no update counted.
    after = buffered.coordinator.status()
    assert (after.round_id, after.model_version) == (before.round_id, v2)
    assert sum(c.updates_accepted for c in after.clients) == sum(
        c.updates_accepted for c in before.clients
    )
    # ... and the round still applies with honest updates.
    buffered.push("c", _g(8), v1)  # one version stale: accepted
    buffered.push("b", _g(9), v2)
    v3, _ = buffered.pull(v2 + 1)
    assert v3 == v2 + 1
