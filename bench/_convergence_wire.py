"""Bytes on the wire for bench/convergence.py, counted from the real framing.

Not a benchmark itself. Every figure is the length of what fedgrpc would
write: protobuf messages built the way the client and coordinator build
them (`wire.frames` for chunks), plus gRPC's 5-byte length prefix per
message. HTTP/2 frame headers (9 bytes per <= 16 KiB DATA frame) and TLS
are not counted; they are the same for every configuration.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedgrpc._proto.v1 import common_pb2, coordinator_pb2
from fedgrpc.compress import OffsetBlock
from fedgrpc.coordinator.rounds.downlink import Transition
from fedgrpc.domain.chunks import iter_chunks
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.wire.frames import encode_model_chunk, encode_update_chunk

GRPC_PREFIX_BYTES = 5
"""Per gRPC message: 1 compression flag byte + 4 length bytes."""
_CLIENT_ID = "c00001"
"""The registry's id format (`c%05d`)."""
_SESSION_TOKEN = bytes(16)
"""registry.SESSION_TOKEN_BYTES of token."""
_ROUND = 1_000
"""A realistic round number (varints grow with it)."""


def _message_bytes(serialized: bytes) -> int:
    return len(serialized) + GRPC_PREFIX_BYTES


def push_overhead_bytes(num_coordinates: int) -> int:
    """Header and commit of one PushUpdate stream (everything but the chunks)."""
    header = coordinator_pb2.PushUpdateRequest(
        header=coordinator_pb2.UpdateHeader(
            client_id=_CLIENT_ID,
            session_token=_SESSION_TOKEN,
            round_id=_ROUND,
            base_version=_ROUND,
            kind=coordinator_pb2.UPDATE_KIND_PSEUDO_GRADIENT,
            codec=common_pb2.CODEC_TOPK,
            num_coordinates=num_coordinates,
            num_samples=1_600,
            train_loss=1.5,
        )
    )
    commit = coordinator_pb2.PushUpdateRequest(
        commit=coordinator_pb2.UpdateCommit(num_chunks=1)
    )
    return sum(_message_bytes(m.SerializeToString()) for m in (header, commit))


def chunk_bytes(blocks: Iterable[OffsetBlock]) -> tuple[int, int]:
    """(framed bytes, payload bytes) of one push's chunk messages."""
    framed = payload = 0
    for seq, block in enumerate(blocks):
        data = memoryview(block.encoded.payload)
        message = encode_update_chunk(seq, block.offset, block.count, data)
        framed += _message_bytes(message)
        payload += len(data)
    return framed, payload


def payload_push_bytes(payload: bytes, count: int, chunk_bytes: int) -> int:
    """Framed bytes of one push carrying `payload` in chunks of <= `chunk_bytes`.

    For bench codecs that send one payload for the whole update (`_low_rank`):
    each chunk message claims all `count` coordinates from offset 0.
    """
    view = memoryview(payload)
    pieces = range(0, max(len(view), 1), chunk_bytes)
    framed = sum(
        _message_bytes(encode_update_chunk(seq, 0, count, view[at : at + chunk_bytes]))
        for seq, at in enumerate(pieces)
    )
    return framed + push_overhead_bytes(count)


def pull_bytes(spec: ModelSpec, chunk_size: int) -> tuple[int, int]:
    """(uplink, downlink) bytes of one PullModel of the whole model.

    Uplink is the request; downlink the model header and the native-byte
    chunks exactly as the coordinator's servicer frames them.
    """
    request = coordinator_pb2.PullModelRequest(
        client_id=_CLIENT_ID, session_token=_SESSION_TOKEN, min_version=_ROUND
    )
    header = coordinator_pb2.PullModelResponse(
        header=coordinator_pb2.ModelHeader(
            model_version=_ROUND,
            round_id=_ROUND,
            model_spec_digest=spec.digest,
            total_bytes=spec.num_bytes,
            weights_sha256=bytes(32),
            signature=bytes(64),
        )
    )
    down = _message_bytes(header.SerializeToString())
    native = memoryview(bytes(spec.num_bytes))
    for offset, data in iter_chunks(native, chunk_size):
        down += _message_bytes(encode_model_chunk(offset, data))
    return _message_bytes(request.SerializeToString()), down


def step_pull_bytes(spec: ModelSpec, step: Transition, codec: str) -> tuple[int, int]:
    """(uplink, downlink) bytes of one PullModel answered with a compressed step.

    The request names the version held; the header announces the step (and
    carries the signed digest and signature, as a whole pull's does); then one
    ModelDelta message per block, as the coordinator's servicer sends them.
    """
    request = coordinator_pb2.PullModelRequest(
        client_id=_CLIENT_ID,
        session_token=_SESSION_TOKEN,
        min_version=_ROUND,
        held_version=_ROUND - 1,
    )
    header = coordinator_pb2.PullModelResponse(
        header=coordinator_pb2.ModelHeader(
            model_version=_ROUND,
            round_id=_ROUND,
            model_spec_digest=spec.digest,
            total_bytes=spec.num_bytes,
            weights_sha256=bytes(32),
            signature=bytes(64),
            delta_from_version=_ROUND - 1,
            delta_codec=codec,
        )
    )
    down = _message_bytes(header.SerializeToString())
    for block in step.blocks:
        message = coordinator_pb2.PullModelResponse(
            delta=coordinator_pb2.ModelDelta(
                version=_ROUND,
                offset=block.offset,
                count=block.count,
                payload=block.payload,
            )
        )
        down += _message_bytes(message.SerializeToString())
    return _message_bytes(request.SerializeToString()), down
