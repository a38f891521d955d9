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
from fedgrpc.errors import IncompleteUpdateError, InvalidUpdateError, ModelMismatchError
from fedgrpc.log import get_logger
from fedgrpc.wire.chunking import ChunkOrder, iter_chunks
from fedgrpc.wire.frames import encode_update_chunk, serialize_or_pass
from fedgrpc.wire.spec import ModelSpec

if TYPE_CHECKING:
    from fedgrpc._proto.v1.coordinator_pb2_grpc import CoordinatorServiceAsyncStub

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


@dataclass(frozen=True, slots=True)
class PulledModel:
    """Global weights in native-byte layout (`ModelSpec` order, own dtypes)."""

    version: int
    round_id: int
    buffer: torch.Tensor
    """uint8, `spec.num_bytes` long; view it with `wire.tensors.unpack_native`."""


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


class ModelReceiver:
    """Checks a PullModel stream and copies its chunks into a uint8 buffer.

    One instance per pull. Validation lives here rather than trusting the
    coordinator, so a coordinator bug cannot silently corrupt the model.
    """

    def __init__(self, spec: ModelSpec, buffer: torch.Tensor) -> None:
        if buffer.dtype != torch.uint8 or buffer.numel() != spec.num_bytes:
            raise ValueError(
                f"model buffer must be {spec.num_bytes} uint8 bytes, got "
                f"{buffer.numel()} {buffer.dtype}"
            )
        self.spec = spec
        self.buffer = buffer
        self._target = buffer.numpy()
        self._order = ChunkOrder(spec.num_bytes, max_chunks=max(1, spec.num_bytes))
        self.header: coordinator_pb2.ModelHeader | None = None

    def accept(self, message: coordinator_pb2.PullModelResponse) -> None:
        """Take the next message: the header first, then chunks in byte order.

        Raises:
            ModelMismatchError: the weights follow another model spec.
            InvalidUpdateError: header missing or repeated, size mismatch,
                chunk out of order or out of range.
        """
        part = message.WhichOneof("part")
        if part == "header":
            self._accept_header(message.header)
        elif part == "chunk":
            self._accept_chunk(message.chunk)
        else:
            raise InvalidUpdateError("PullModel sent a message with no part")

    def _accept_header(self, header: coordinator_pb2.ModelHeader) -> None:
        if self.header is not None:
            raise InvalidUpdateError("PullModel sent a second ModelHeader")
        if header.model_spec_digest != self.spec.digest:
            raise ModelMismatchError(
                f"the coordinator sent weights of model version "
                f"{header.model_version} for a different model spec than this "
                "client's; every client must train the same architecture"
            )
        if header.total_bytes != self.spec.num_bytes:
            raise InvalidUpdateError(
                f"the coordinator announced {header.total_bytes} model bytes, the "
                f"spec needs {self.spec.num_bytes}"
            )
        self.header = header

    def _accept_chunk(self, chunk: coordinator_pb2.ModelChunk) -> None:
        if self.header is None:
            raise InvalidUpdateError("PullModel sent a chunk before its ModelHeader")
        data = chunk.data  # upb copies on every read: read once
        self._order.accept(self._order.next_seq, chunk.offset, len(data))
        start = chunk.offset
        self._target[start : start + len(data)] = np.frombuffer(data, dtype=np.uint8)

    def finish(self) -> PulledModel:
        """The pulled model, once the stream ended.

        Raises:
            IncompleteUpdateError: the stream ended before covering the model.
        """
        if self.header is None or not self._order.is_complete:
            got = self._order.next_offset
            raise IncompleteUpdateError(
                f"PullModel ended after {got} of {self.spec.num_bytes} model bytes"
            )
        return PulledModel(self.header.model_version, self.header.round_id, self.buffer)


async def pull_model(
    stub: CoordinatorServiceAsyncStub,
    credentials: Credentials,
    min_version: int,
    spec: ModelSpec,
    timeout_s: float,
    buffer: torch.Tensor | None = None,
) -> PulledModel:
    """Download the global weights once their version is at least `min_version`.

    Args:
        stub: Async CoordinatorService stub on the current loop.
        credentials: From Join.
        min_version: The coordinator waits for this version (0: any).
        spec: The federation's model spec.
        timeout_s: Deadline covering the wait and the transfer.
        buffer: uint8 tensor of `spec.num_bytes` to fill (reused across pulls
            so the downlink allocates nothing); None allocates one.

    Raises:
        CoordinatorUnavailableError: DEADLINE_EXCEEDED (the version did not
            appear in time) or UNAVAILABLE.
        ModelMismatchError, InvalidUpdateError, IncompleteUpdateError: the
            stream does not describe this model completely and in order.
    """
    if buffer is None:
        buffer = torch.empty(spec.num_bytes, dtype=torch.uint8)
    receiver = ModelReceiver(spec, buffer)
    request = coordinator_pb2.PullModelRequest(
        client_id=credentials.client_id,
        session_token=credentials.session_token,
        min_version=min_version,
    )
    call = stub.PullModel(request, timeout=timeout_s)
    try:
        with translated("PullModel"):
            async for message in call:
                receiver.accept(message)
    finally:
        call.cancel()  # no-op once finished; stops the stream if we rejected it
    pulled = receiver.finish()
    if pulled.version < min_version:
        raise InvalidUpdateError(
            f"asked for model version >= {min_version}, got {pulled.version}"
        )
    return pulled
