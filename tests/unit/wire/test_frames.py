"""Hand-framed chunk messages parse to exactly what protobuf would have built."""

from __future__ import annotations

import numpy as np
import pytest

from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.crypto.signing import ChunkProof
from fedgrpc.wire.frames import (
    ChunkFrame,
    Malformed,
    decode_push_request,
    encode_model_chunk,
    encode_update_chunk,
    serialize_or_pass,
)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 1 << 20])
@pytest.mark.parametrize(("seq", "offset"), [(0, 0), (1, 300), (2**40, 2**62)])
def test_update_chunk_frame_equals_protobuf(size: int, seq: int, offset: int) -> None:
    payload = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    view = payload.data.cast("B")
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


def test_decoder_gives_zero_copy_views_of_plain_chunks() -> None:
    payload = np.arange(1000, dtype="<f4").tobytes()
    framed = encode_update_chunk(3, 4000, 1000, memoryview(payload))
    frame = decode_push_request(framed)
    assert isinstance(frame, ChunkFrame)
    assert (frame.seq, frame.offset, frame.count) == (3, 4000, 1000)
    assert frame.payload.obj is framed  # a view, not a copy
    assert bytes(frame.payload) == payload


@pytest.mark.parametrize(
    "message",
    [
        pb.PushUpdateRequest(header=pb.UpdateHeader(client_id="c1", round_id=2)),
        pb.PushUpdateRequest(commit=pb.UpdateCommit(num_chunks=4)),
        pb.PushUpdateRequest(chunk=pb.UpdateChunk(seq=1, count=2, payload=b"abcdefgh")),
        pb.PushUpdateRequest(chunk=pb.UpdateChunk()),
    ],
)
def test_decoder_agrees_with_protobuf(message: pb.PushUpdateRequest) -> None:
    decoded = decode_push_request(message.SerializeToString())
    if isinstance(decoded, ChunkFrame):
        decoded = pb.PushUpdateRequest(
            chunk=pb.UpdateChunk(
                seq=decoded.seq,
                offset=decoded.offset,
                count=decoded.count,
                payload=bytes(decoded.payload),
            )
        )
    assert decoded == message


def test_decoder_falls_back_to_protobuf_for_unusual_encodings() -> None:
    # Payload before seq, a repeated field and an unknown field: all legal protobuf.
    chunk = pb.UpdateChunk(payload=b"\x01\x02\x03\x04").SerializeToString()
    chunk += pb.UpdateChunk(seq=9, count=1).SerializeToString()
    unknown = b"\x28\x07"  # field 5, varint 7: unknown to UpdateChunk
    framed = b"\x12" + bytes([len(chunk)]) + chunk
    plain = decode_push_request(framed)
    assert isinstance(plain, ChunkFrame)
    assert (plain.seq, plain.count, bytes(plain.payload)) == (9, 1, b"\x01\x02\x03\x04")
    odd = b"\x12" + bytes([len(chunk) + 2]) + chunk + unknown
    parsed = decode_push_request(odd)
    assert isinstance(parsed, pb.PushUpdateRequest)
    assert parsed.chunk.seq == 9
    truncated = decode_push_request(b"\x12\x7f\x08")  # protobuf decides: garbage
    assert isinstance(truncated, Malformed)
    assert "fedgrpc.v1.PushUpdateRequest" in str(truncated.error())


def test_signed_chunk_frame_equals_protobuf_and_decodes_its_proof() -> None:
    payload = np.arange(300, dtype="<f4").tobytes()
    proof = ChunkProof(b"h" * 32, b"p" * 32, b"s" * 64)
    framed = encode_update_chunk(2, 600, 300, memoryview(payload), proof)
    expected = pb.PushUpdateRequest(
        chunk=pb.UpdateChunk(
            seq=2,
            offset=600,
            count=300,
            payload=payload,
            payload_sha256=proof.payload_sha256,
            prev_sha256=proof.prev_sha256,
            signature=proof.signature,
        )
    )
    assert pb.PushUpdateRequest.FromString(framed) == expected
    frame = decode_push_request(framed)
    assert isinstance(frame, ChunkFrame)
    assert frame.proof == proof
    assert frame.payload.obj is framed  # the payload is still a view
    unsigned = decode_push_request(encode_update_chunk(0, 0, 1, memoryview(b"abcd")))
    assert isinstance(unsigned, ChunkFrame)
    assert unsigned.proof is None
