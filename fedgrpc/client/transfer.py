"""Moving tensors over the data RPCs: PushUpdate up, PullModel down.

Uplink: a flat float32 vector (the pseudo-gradient, or the initial weights)
is cut by `fedgrpc.wire.chunking.iter_chunks` into ~1 MiB slices of its own
memory and streamed as header, chunks, commit. Downlink: the model's bytes in
each tensor's native dtype arrive as ordered chunks and are copied straight
into one preallocated uint8 buffer, one memcpy per chunk.

protobuf (upb) accepts only `bytes` for a bytes field, so each uplink chunk
costs one copy into a `bytes` object (and protobuf's own serialisation copy);
each downlink chunk is read from its message once. Nothing here loops over
elements. All functions run on the client's background loop.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import grpc
import numpy as np
import torch

from fedgrpc._proto.v1 import common_pb2, coordinator_pb2
from fedgrpc.client.connection import Credentials
from fedgrpc.client.status import translated
from fedgrpc.log import get_logger
from fedgrpc.wire.chunking import iter_chunks
from fedgrpc.wire.frames import encode_update_chunk, serialize_or_pass

if TYPE_CHECKING:
    pass

log = get_logger(__name__)
PushMethod = grpc.aio.StreamUnaryMultiCallable[
    coordinator_pb2.PushUpdateRequest | bytes, coordinator_pb2.PushUpdateResponse
]

FP32_BYTES = 4
UpdateKindName = Literal["pseudo_gradient", "initial_weights"]
_KINDS: dict[UpdateKindName, coordinator_pb2.UpdateKind.ValueType] = {
    "pseudo_gradient": coordinator_pb2.UPDATE_KIND_PSEUDO_GRADIENT,
    "initial_weights": coordinator_pb2.UPDATE_KIND_INITIAL_WEIGHTS,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateMeta:
    """What an update claims to be; becomes its `UpdateHeader`."""

    round_id: int
    """Round the update is for (0 for initial weights)."""
    base_version: int
    """Model version the pseudo-gradient was computed from (0 for seeding)."""
    kind: UpdateKindName
    """A pseudo-gradient, or the initial weights of an unseeded federation."""
    num_samples: int = 1
    """Training samples behind the update; weights the coordinator's mean."""
    train_loss: float = 0.0
    """Mean inner-loop training loss, for the coordinator's status."""


@dataclass(frozen=True, slots=True)
class PushResult:
    """The coordinator's acknowledgement of a committed update."""

    round_id: int
    updates_in_round: int
    bytes_sent: int
    """Payload bytes sent (4 per coordinate)."""


def fp32_le_array(flat: torch.Tensor) -> np.ndarray:
    """`flat` as a little-endian float32 numpy array, sharing memory when possible.

    Raises:
        ValueError: `flat` is not a 1-D contiguous float32 CPU tensor.
    """
    if (
        flat.dim() != 1
        or flat.dtype != torch.float32
        or flat.device.type != "cpu"
        or not flat.is_contiguous()
    ):
        raise ValueError(
            f"updates must be 1-D contiguous float32 CPU tensors, got "
            f"{flat.dtype} {tuple(flat.shape)} on {flat.device}"
        )
    values = flat.detach().numpy()
    # The wire is little-endian; only a big-endian host pays for a swap.
    return values if sys.byteorder == "little" else values.astype("<f4")


def update_header(
    credentials: Credentials,
    meta: UpdateMeta,
    num_coordinates: int,
    codec: common_pb2.Codec.ValueType,
) -> coordinator_pb2.PushUpdateRequest:
    """The first message of every update stream."""
    return coordinator_pb2.PushUpdateRequest(
        header=coordinator_pb2.UpdateHeader(
            client_id=credentials.client_id,
            session_token=credentials.session_token,
            round_id=meta.round_id,
            base_version=meta.base_version,
            kind=_KINDS[meta.kind],
            codec=codec,
            num_coordinates=num_coordinates,
            num_samples=meta.num_samples,
            train_loss=meta.train_loss,
        )
    )


async def update_requests(
    credentials: Credentials, meta: UpdateMeta, flat: torch.Tensor, chunk_bytes: int
) -> AsyncIterator[coordinator_pb2.PushUpdateRequest | bytes]:
    """Yield one update's messages: header, chunks in order, commit.

    Chunks come pre-encoded (`wire.frames`): one payload copy instead of three.

    An async generator, so grpc.aio pulls and writes one chunk at a time and
    encoding the next chunk overlaps sending the previous one. The chunks
    are slices of `flat`, which must not change until the push finishes.
    """
    values = fp32_le_array(flat)
    yield update_header(credentials, meta, values.size, common_pb2.CODEC_DENSE_FP32)
    num_chunks = 0
    chunks = iter_chunks(values.data, chunk_bytes, itemsize=FP32_BYTES)
    for seq, (byte_offset, view) in enumerate(chunks):
        yield encode_update_chunk(
            seq, byte_offset // FP32_BYTES, len(view) // FP32_BYTES, view
        )
        num_chunks = seq + 1
    yield coordinator_pb2.PushUpdateRequest(
        commit=coordinator_pb2.UpdateCommit(num_chunks=num_chunks)
    )


def push_method(channel: grpc.aio.Channel) -> PushMethod:
    """PushUpdate with a serializer that lets pre-encoded chunks through."""
    return channel.stream_unary(
        "/fedgrpc.v1.CoordinatorService/PushUpdate",
        request_serializer=serialize_or_pass,
        response_deserializer=coordinator_pb2.PushUpdateResponse.FromString,
    )


async def push_update(
    push: PushMethod,
    credentials: Credentials,
    meta: UpdateMeta,
    flat: torch.Tensor,
    chunk_bytes: int,
    timeout_s: float,
) -> PushResult:
    """Stream one raw float32 update and wait for its acknowledgement.

    Args:
        push: `push_method(channel)` on the current loop's channel.
        credentials: From Join.
        meta: Header fields.
        flat: 1-D contiguous float32 CPU vector, `num_coordinates` long.
        chunk_bytes: Payload bytes per chunk (the round config's value).
        timeout_s: Deadline of the whole stream.

    Raises:
        See `stream_update`.
    """
    requests = update_requests(credentials, meta, flat, chunk_bytes)
    response = await stream_update(push, requests, timeout_s)
    sent = flat.numel() * FP32_BYTES
    log.debug("update_sent", round=response.round_id, kind=meta.kind, bytes=sent)
    return PushResult(response.round_id, response.updates_in_round, sent)


async def stream_update(
    push: PushMethod,
    requests: AsyncIterator[coordinator_pb2.PushUpdateRequest | bytes],
    timeout_s: float,
) -> coordinator_pb2.PushUpdateResponse:
    """Write an update's messages (header, chunks, commit); return the ack.

    Raises:
        WrongRoundError: FAILED_PRECONDITION (round closed, stale base,
            duplicate update, or the model is already seeded).
        InvalidUpdateError, TooLargeError, IncompleteUpdateError,
        UnknownClientError, CoordinatorUnavailableError: see `status.py`.
    """
    with translated("PushUpdate"):
        # Explicit writes, so a call that already ended stops our writes at
        # once. The coordinator reads a refused stream to its end before it
        # answers, because grpcio turns a send into a closed call into a bare
        # INTERNAL error that hides the coordinator's real status.
        call = push(timeout=timeout_s)
        try:
            async for request in requests:
                await call.write(request)
            await call.done_writing()
        except asyncio.InvalidStateError:
            pass  # the call already ended; `await call` below says how
        return await call
