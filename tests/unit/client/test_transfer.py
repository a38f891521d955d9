"""Update encoding and model-stream checking, without a server."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgrpc import errors
from fedgrpc._proto.v1 import common_pb2, coordinator_pb2
from fedgrpc.client.connection.channel import Credentials
from fedgrpc.client.connection.pull import ModelReceiver
from fedgrpc.client.connection.push import (
    UpdateMeta,
    fp32_le_array,
    update_requests,
)
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec

CREDENTIALS = Credentials("c00001", b"t" * 16)
SPEC = ModelSpec(
    (
        TensorSpec("w", (5, 3), DType.FLOAT32),
        TensorSpec("b", (3,), DType.BFLOAT16),
    )
)


async def _collect(
    flat: torch.Tensor, chunk_bytes: int
) -> list[coordinator_pb2.PushUpdateRequest]:
    meta = UpdateMeta(
        round_id=4,
        base_version=3,
        kind="pseudo_gradient",
        num_samples=12,
        train_loss=0.5,
    )
    return [
        coordinator_pb2.PushUpdateRequest.FromString(m) if isinstance(m, bytes) else m
        async for m in update_requests(CREDENTIALS, meta, flat, chunk_bytes)
    ]


async def test_update_stream_is_header_chunks_commit_and_round_trips() -> None:
    flat = torch.randn(1000)

    messages = await _collect(flat, chunk_bytes=1026)  # not a multiple of 4

    header = messages[0].header
    assert messages[0].WhichOneof("part") == "header"
    assert (header.client_id, header.session_token) == ("c00001", b"t" * 16)
    assert (header.round_id, header.base_version) == (4, 3)
    assert header.kind == coordinator_pb2.UPDATE_KIND_PSEUDO_GRADIENT
    assert header.codec == common_pb2.CODEC_DENSE_FP32
    assert (header.num_coordinates, header.num_samples) == (1000, 12)
    chunks = [m.chunk for m in messages[1:-1]]
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert [c.offset for c in chunks] == [256 * i for i in range(len(chunks))]
    assert all(c.count * 4 == len(c.payload) <= 1026 for c in chunks)
    assert messages[-1].commit.num_chunks == len(chunks)
    payload = b"".join(c.payload for c in chunks)
    np.testing.assert_array_equal(np.frombuffer(payload, "<f4"), flat.numpy())


async def test_initial_weights_kind_and_empty_vector() -> None:
    meta = UpdateMeta(round_id=0, base_version=0, kind="initial_weights")
    messages = [
        m
        async for m in update_requests(CREDENTIALS, meta, torch.zeros(0), 1024)
        if not isinstance(m, bytes)  # header and commit are messages
    ]

    assert messages[0].header.kind == coordinator_pb2.UPDATE_KIND_INITIAL_WEIGHTS
    assert messages[1].commit.num_chunks == 0


@pytest.mark.parametrize(
    "flat",
    [
        torch.zeros(4, dtype=torch.float64),
        torch.zeros(2, 2),
        torch.zeros(8)[::2],
    ],
)
def test_updates_must_be_flat_contiguous_fp32(flat: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="1-D contiguous float32"):
        fp32_le_array(flat)


def _header(**overrides: object) -> coordinator_pb2.PullModelResponse:
    fields: dict[str, object] = {
        "model_version": 2,
        "round_id": 2,
        "model_spec_digest": SPEC.digest,
        "total_bytes": SPEC.num_bytes,
    }
    fields.update(overrides)
    return coordinator_pb2.PullModelResponse(
        header=coordinator_pb2.ModelHeader(**fields)  # type: ignore[arg-type]
    )


def _chunk(offset: int, data: bytes) -> coordinator_pb2.PullModelResponse:
    return coordinator_pb2.PullModelResponse(
        chunk=coordinator_pb2.ModelChunk(offset=offset, data=data)
    )


def _receiver() -> ModelReceiver:
    return ModelReceiver(SPEC, torch.zeros(SPEC.num_bytes, dtype=torch.uint8))


def test_model_chunks_are_copied_into_the_buffer() -> None:
    data = bytes(range(SPEC.num_bytes))
    receiver = _receiver()

    receiver.accept(_header())
    receiver.accept(_chunk(0, data[:40]))
    receiver.accept(_chunk(40, data[40:]))
    pulled = receiver.finish()

    assert (pulled.version, pulled.round_id) == (2, 2)
    assert bytes(pulled.buffer.numpy()) == data


def test_header_for_another_model_is_a_mismatch() -> None:
    with pytest.raises(errors.ModelMismatchError, match="different model spec"):
        _receiver().accept(_header(model_spec_digest=b"x" * 32))


def test_header_with_wrong_size_is_invalid() -> None:
    with pytest.raises(errors.InvalidUpdateError, match="announced"):
        _receiver().accept(_header(total_bytes=SPEC.num_bytes + 1))


def test_chunk_before_header_is_invalid() -> None:
    with pytest.raises(errors.InvalidUpdateError, match="before its ModelHeader"):
        _receiver().accept(_chunk(0, b"\0" * 4))


def test_chunk_out_of_order_is_incomplete() -> None:
    receiver = _receiver()
    receiver.accept(_header())

    with pytest.raises(errors.IncompleteUpdateError, match="previous chunk ended"):
        receiver.accept(_chunk(8, b"\0" * 8))


def test_chunk_past_the_end_is_invalid() -> None:
    receiver = _receiver()
    receiver.accept(_header())

    with pytest.raises(errors.InvalidUpdateError, match="past the end"):
        receiver.accept(_chunk(0, b"\0" * (SPEC.num_bytes + 1)))


def test_stream_ending_early_is_incomplete() -> None:
    receiver = _receiver()
    receiver.accept(_header())
    receiver.accept(_chunk(0, b"\0" * 10))

    with pytest.raises(errors.IncompleteUpdateError, match="10 of 66"):
        receiver.finish()
