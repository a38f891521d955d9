"""Hand-framed chunk messages parse to exactly what protobuf would have built."""

from __future__ import annotations

import numpy as np
import pytest

from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.wire.frames import (
    encode_model_chunk,
    encode_update_chunk,
    serialize_or_pass,
)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 1 << 20])
@pytest.mark.parametrize(("seq", "offset"), [(0, 0), (1, 300), (2**40, 2**62)])
def test_update_chunk_frame_equals_protobuf(size: int, seq: int, offset: int) -> None:
    payload = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    view = memoryview(payload).cast("B")
    framed = encode_update_chunk(seq, offset, size // 4, view)
    expected = pb.PushUpdateRequest(
        chunk=pb.UpdateChunk(
            seq=seq, offset=offset, count=size // 4, payload=payload.tobytes()
        )
    )
    assert pb.PushUpdateRequest.FromString(framed) == expected
    if size:  # protobuf omits an empty bytes field; the frame keeps it (same message)
        assert framed == expected.SerializeToString()


@pytest.mark.parametrize("size", [0, 5, 1 << 20])
@pytest.mark.parametrize("offset", [0, 1, 2**33])
def test_model_chunk_frame_equals_protobuf(size: int, offset: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    framed = encode_model_chunk(offset, memoryview(data))
    expected = pb.PullModelResponse(chunk=pb.ModelChunk(offset=offset, data=data))
    assert pb.PullModelResponse.FromString(framed) == expected
    if size:
        assert framed == expected.SerializeToString()


def test_serializer_passes_bytes_and_serializes_messages() -> None:
    message = pb.PushUpdateRequest(commit=pb.UpdateCommit(num_chunks=3))
    assert serialize_or_pass(message) == message.SerializeToString()
    assert serialize_or_pass(b"raw") == b"raw"
