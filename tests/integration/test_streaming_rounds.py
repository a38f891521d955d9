"""Streaming rounds through real stubs: each round syncs one fragment, exactly.

Two open-enrollment clients on a real coordinator with round_mode streaming,
P = 2 fragments of a 600-parameter model and FedAvg at lr 1: a round of base
version v must take updates of fragment v mod 2 only (300 coordinates), move
exactly that range of the weights by the mean, and leave the other range
bit-identical; a range pull must carry only that fragment's bytes while its
header still signs the whole model.
"""

from __future__ import annotations

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
HALF = N // 2


@dataclass
class Streaming:
    coordinator: CoordinatorThread
    service: Service
    clients: dict[str, Joined]
    sha: bytes = b""

    def pull(self, min_version: int) -> tuple[int, np.ndarray]:
        version, values = raw_pull(self.service, self.clients["a"], min_version)
        self.sha = sha256(values.astype("<f4").tobytes())
        return version, values

    def push(self, name: str, values: np.ndarray, base: int) -> PB.PushUpdateResponse:
        status = self.coordinator.status()
        params = UpdateParams(
            status.round_id, base, base_sha256=self.sha, num_samples=1
        )
        header, signer = signed_header(self.clients[name], values.size, params)
        flat = values.astype("<f4")
        messages = [header]
        for seq, start in enumerate(range(0, flat.size, CHUNK)):
            part = flat[start : start + CHUNK]
            messages.append(signed_chunk(signer, seq, start, part.size, part.tobytes()))
        messages.append(commit_message(signer))
        return self.service.PushUpdate(iter(messages), timeout=10)

    def pull_range(
        self, start: int, length: int
    ) -> tuple[PB.ModelHeader, dict[int, bytes]]:
        joined = self.clients["b"]
        header, chunks = None, {}
        request = PB.PullModelRequest(
            client_id=joined.client_id, session_token=joined.session_token,
            range_start=start, range_length=length,
        )  # fmt: skip
        for message in self.service.PullModel(request, timeout=10):
            if message.WhichOneof("part") == "header":
                header = message.header
            else:
                chunks[message.chunk.offset] = bytes(message.chunk.data)
        assert header is not None
        return header, chunks


@pytest.fixture
def streaming() -> Iterator[Streaming]:
    config = CoordinatorConfig(
        listen="127.0.0.1:0", seed_from_first_client=True, open_enrollment=True,
        min_clients=2, round_mode="streaming", fragments=2, inner_steps=2,
        streaming_overlap_steps=0, outer_optimizer="fedavg",
        chunk_bytes=CHUNK * 4, round_timeout_s=60,
    )  # fmt: skip
    with serve_in_thread(config) as coordinator:
        channel, service = stub(coordinator.address)
        with channel:
            clients = {n: join(service, tiny_spec(N), n) for n in ("a", "b")}
            initial = np.arange(N, dtype=np.float32) / N
            seed = update_messages(
                clients["a"], initial, round_id=0, base_version=0,
                initial=True, chunk_coords=CHUNK,
            )  # fmt: skip
            service.PushUpdate(seed, timeout=10)
            fed = Streaming(coordinator, service, clients)
            fed.pull(0)
            yield fed


def _g(seed: int, n: int = HALF) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def test_each_round_moves_only_its_fragment(streaming: Streaming) -> None:
    v0, w0 = streaming.pull(0)
    # Round on v0 syncs fragment 0 = coordinates [0, 300).
    ga, gb = _g(1), _g(2)
    streaming.push("a", ga, v0)
    streaming.push("b", gb, v0)
    v1, w1 = streaming.pull(v0 + 1)
    np.testing.assert_allclose(w1[:HALF], w0[:HALF] - (ga + gb) / 2, rtol=1e-6)
    assert np.array_equal(w1[HALF:], w0[HALF:])  # the other fragment: untouched
    # Round on v1 syncs fragment 1 = coordinates [300, 600).
    ga, gb = _g(3), _g(4)
    streaming.push("a", ga, v1)
    streaming.push("b", gb, v1)
    _v2, w2 = streaming.pull(v1 + 1)
    assert np.array_equal(w2[:HALF], w1[:HALF])
    np.testing.assert_allclose(w2[HALF:], w1[HALF:] - (ga + gb) / 2, rtol=1e-6)
    status = streaming.coordinator.status()
    assert status.round_mode == "streaming"
    # Uplink per update: one fragment, half the model's float32 bytes.
    assert {c.name: c.bytes_received for c in status.clients} == {
        "a": 2 * 4 * HALF, "b": 2 * 4 * HALF,
    }  # fmt: skip


def test_an_update_of_the_whole_model_is_refused(streaming: Streaming) -> None:
    v0, _ = streaming.pull(0)
    expect_status(
        lambda: streaming.push("a", _g(5, N), v0),
        Code.INVALID_ARGUMENT,
        "syncs fragment 0 (coordinates 0..300, 300 of them)",
    )
    # The round goes on: the right-sized updates still apply it.
    streaming.push("a", _g(6), v0)
    streaming.push("b", _g(7), v0)
    version, _ = streaming.pull(v0 + 1)
    assert version == v0 + 1


def test_a_range_pull_carries_only_the_fragment(streaming: Streaming) -> None:
    _, w0 = streaming.pull(0)
    header, chunks = streaming.pull_range(4 * HALF, 4 * HALF)
    assert header.total_bytes == 4 * N  # the header describes the whole model
    assert header.weights_sha256 == sha256(w0.astype("<f4").tobytes())
    assert min(chunks) == 4 * HALF
    data = b"".join(chunks[k] for k in sorted(chunks))
    assert data == w0[HALF:].astype("<f4").tobytes()
    expect_status(
        lambda: streaming.pull_range(4 * HALF, 4 * N),
        Code.INVALID_ARGUMENT,
        "of a model of 2400 bytes",
    )
    expect_status(
        lambda: streaming.pull_range(8, 0),
        Code.INVALID_ARGUMENT,
        "without a range_length",
    )
