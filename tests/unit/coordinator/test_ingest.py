"""Ingest without gRPC: an update's life from header to commit, on a real runtime.

The servicer only translates; these drive `UpdateIngest.receive` with domain
values, as a PushUpdate stream would after translation, and check what the
round engine saw. The recording sink shows the narrow hand-off an Accumulator
slots into: every checked chunk, in order, then the commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import numpy as np
import pytest

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.ingest.sinks import ChunkCheck, UpdateSink
from fedgrpc.coordinator.rounds.engine import ChunkValues
from fedgrpc.coordinator.rounds.records import Ticket
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.coordinator.runtime import CoordinatorRuntime
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.crypto.signing import CommitProof
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.domain.requests import JoinInfo, UpdateHeaderInfo
from fedgrpc.errors import IncompleteUpdateError
from fedgrpc.wire.frames import ChunkFrame

N = 300
SPEC = ModelSpec((TensorSpec("w", (N,), DType.FLOAT32),))
CHUNK_VALUES = 256  # 1 KiB chunks (the smallest allowed): an update takes two


def _runtime() -> CoordinatorRuntime:
    config = CoordinatorConfig(
        seed_from_first_client=True,
        open_enrollment=True,
        update_signatures="off",
        min_clients=1,
        inner_steps=1,
        outer_optimizer="fedavg",
        chunk_bytes=4 * CHUNK_VALUES,
    )
    return CoordinatorRuntime(config)


def _join(runtime: CoordinatorRuntime) -> ClientRecord:
    info = JoinInfo("c", SPEC, 1, ("dense-fp32",), None)
    return runtime.join(info, PrivateKey.generate().public_key).client


def _header(client: ClientRecord, round_id: int, initial: bool) -> UpdateHeaderInfo:
    return UpdateHeaderInfo(
        client_id=client.client_id,
        session_token=client.session_token,
        round_id=round_id,
        base_version=0,
        is_initial_weights=initial,
        codec="dense-fp32",
        num_coordinates=SPEC.num_coordinates,
        num_samples=1,
        train_loss=1.0,
    )


def _parts(values: np.ndarray, commit: bool = True) -> list[ChunkFrame | CommitProof]:
    parts: list[ChunkFrame | CommitProof] = []
    for seq, start in enumerate(range(0, values.size, CHUNK_VALUES)):
        chunk = values[start : start + CHUNK_VALUES]
        parts.append(ChunkFrame(seq, start, chunk.size, memoryview(chunk.tobytes())))
    if commit:
        parts.append(CommitProof(len(parts), b"", b""))
    return parts


async def _stream(parts: Iterable[ChunkFrame | CommitProof]) -> AsyncIterator[object]:
    for part in parts:
        yield part


def _as_part(message: object) -> ChunkFrame | CommitProof:
    assert isinstance(message, ChunkFrame | CommitProof)
    return message


class RecordingSink:
    """Wraps the runtime's own sink and records what ingest hands it."""

    def __init__(self, inner: UpdateSink) -> None:
        self.inner = inner
        self.added: list[tuple[int, np.ndarray]] = []
        self.committed: list[int] = []

    def check(self, client: ClientRecord, header: UpdateHeaderInfo) -> None:
        self.inner.check(client, header)

    def open(self, client: ClientRecord, header: UpdateHeaderInfo) -> Ticket:
        return self.inner.open(client, header)

    def chunk_check(self, ticket: Ticket) -> ChunkCheck:
        return self.inner.chunk_check(ticket)

    def add_chunk(self, ticket: Ticket, offset: int, values: ChunkValues) -> None:
        assert isinstance(values, np.ndarray)
        self.added.append((offset, values.copy()))
        self.inner.add_chunk(ticket, offset, values)

    async def commit(self, ticket: Ticket, nbytes: int, digest: bytes) -> int:
        self.committed.append(nbytes)
        return await self.inner.commit(ticket, nbytes, digest)

    def abandon(self, ticket: Ticket, reason: str) -> None:
        self.inner.abandon(ticket, reason)


def test_seed_then_update_through_ingest_applies_the_round_without_grpc() -> None:
    async def scenario() -> None:
        runtime = _runtime()
        client = _join(runtime)
        initial = np.arange(N, dtype=np.float32)
        update = np.full(N, 0.5, dtype=np.float32)
        ingest = runtime.ingest
        seeded = await ingest.receive(
            _header(client, 0, True), _stream(_parts(initial)), _as_part
        )
        receipt = await ingest.receive(
            _header(client, 1, False), _stream(_parts(update)), _as_part
        )
        await runtime.stop()

        assert (seeded.round_id, seeded.bytes_received) == (0, 4 * N)
        assert (receipt.round_id, receipt.updates_in_round) == (1, 1)
        assert runtime.engine.model.version == 1
        assert runtime.run.bytes_received == 8 * N
        master = runtime.engine.model.master
        assert master is not None
        np.testing.assert_allclose(master.numpy(), initial - update)  # FedAvg, lr 1

    asyncio.run(scenario())


def test_every_checked_chunk_reaches_the_sink_in_order_then_the_commit() -> None:
    async def scenario() -> RecordingSink:
        runtime = _runtime()
        client = _join(runtime)
        ingest = runtime.ingest
        await ingest.receive(
            _header(client, 0, True), _stream(_parts(np.zeros(N, np.float32))), _as_part
        )
        sink = RecordingSink(ingest._round_sink)
        ingest.choose_sink = lambda header: sink
        update = np.arange(N, dtype=np.float32)
        await ingest.receive(
            _header(client, 1, False), _stream(_parts(update)), _as_part
        )
        await runtime.stop()
        return sink

    sink = asyncio.run(scenario())

    assert [offset for offset, _ in sink.added] == [0, CHUNK_VALUES]
    np.testing.assert_array_equal(
        np.concatenate([v for _, v in sink.added]), np.arange(N)
    )
    assert sink.committed == [4 * N]


def test_a_stream_without_commit_is_abandoned_and_its_round_goes_on() -> None:
    async def scenario() -> CoordinatorRuntime:
        runtime = _runtime()
        client = _join(runtime)
        ingest = runtime.ingest
        await ingest.receive(
            _header(client, 0, True), _stream(_parts(np.zeros(N, np.float32))), _as_part
        )
        with pytest.raises(IncompleteUpdateError):
            await ingest.receive(
                _header(client, 1, False),
                _stream(_parts(np.ones(N, np.float32), commit=False)),
                _as_part,
            )
        await runtime.stop()
        return runtime

    runtime = asyncio.run(scenario())

    current = runtime.engine.current
    assert current is not None
    assert current.void_reason is None
    assert not current.streaming  # the broken push was forgotten
    assert runtime.engine.model.version == 0
