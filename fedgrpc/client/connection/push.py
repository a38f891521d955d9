"""Pushing updates: the PushUpdate stream, raw float32 or through an encoder.

A flat float32 vector (the pseudo-gradient, or the initial weights)
is cut by `fedgrpc.domain.chunks.iter_chunks` into ~1 MiB slices of its own
memory and streamed as header, chunks, commit; with signing on, the header
is signed, each chunk carries its payload's hash (BLAKE3 or SHA-256, as Join
negotiated), chain link and signature (`crypto.signing.UpdateSigner`), and
the commit closes the chain. Payloads are hashed on a worker thread (both
hashes release the GIL) so the loop keeps writing the previous chunk
meanwhile. Lossy codecs with error
feedback (`client.compressed`, `client.secure`) plug in as an
`UpdateEncoder`. The way down is `pull`.

protobuf (upb) accepts only `bytes` for a bytes field, so each uplink chunk
costs one copy into a `bytes` object (and protobuf's own serialisation copy);
nothing here loops over elements. All functions run on the client's background loop.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import grpc
import numpy as np
import torch

from fedgrpc._proto.v1 import common_pb2, coordinator_pb2
from fedgrpc.client.connection.channel import Credentials
from fedgrpc.client.status import translated
from fedgrpc.compress import CodecConfig, ErrorFeedback
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.crypto.signing import DEFAULT_HASH, Hasher, HashName, UpdateSigner
from fedgrpc.domain.chunks import iter_chunks
from fedgrpc.domain.requests import RecordPrivacyClaim
from fedgrpc.log import get_logger
from fedgrpc.wire.codec_params import CodecBinding
from fedgrpc.wire.convert import record_dp_to_proto
from fedgrpc.wire.frames import encode_update_chunk, serialize_or_pass
from fedgrpc.wire.signed import commit_message, sign_update_header

log = get_logger(__name__)
T = TypeVar("T")
PushMethod = grpc.aio.StreamUnaryMultiCallable[
    coordinator_pb2.PushUpdateRequest | bytes, coordinator_pb2.PushUpdateResponse
]

FP32_BYTES = 4
HASH_IN_THREAD_BYTES = 64 << 10
"""Payloads at least this big are hashed on a worker thread."""
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
    round_nonce: bytes = b""
    """The round's nonce (RoundStarted; JoinResponse for initial weights)."""
    base_sha256: bytes = b""
    """SHA-256 of the base version's bytes (empty for initial weights)."""
    record_dp: RecordPrivacyClaim | None = None
    """The client's record-level DP spend (`fedgrpc.privacy.RecordDP`); signed."""
    compute_s: float | None = None
    """Wall seconds of training behind the update (the coordinator's goodput)."""
    eval_loss: float | None = None
    """Validation loss of model `eval_version` (`evaluate=`), or None."""
    eval_version: int = 0
    shard: tuple[int, int] = (0, 0)
    """(shard index, shard count) of the range sent; (0, 0): the whole model."""


@dataclass(frozen=True, slots=True)
class Signing:
    """What a client signs its updates with, and the context they are bound to."""

    key: PrivateKey
    run_id: str
    binding: CodecBinding
    """The federation's codec parameters (DENSE_FP32_BINDING for raw float32)."""
    hash_name: HashName = DEFAULT_HASH
    """The chain hash Join negotiated (RoundConfig.update_hash)."""
    sign_chunks: bool = True
    """False: chunks go with their link and digest only, the commit's
    signature covering them (RoundConfig.chunk_signatures_optional)."""

    def sign_header(self, request: coordinator_pb2.PushUpdateRequest) -> UpdateSigner:
        """Sign the header in `request` in place; the signer for its chunks.

        Payload digests given to the signer must use its `hash`.
        """
        return sign_update_header(
            request.header,
            self.key,
            self.run_id,
            self.binding,
            self.hash_name,
            self.sign_chunks,
        )


class UpdateEncoder(Protocol):
    """A codec with error feedback that encodes each round's update as a stream.

    The contract `CoordinatorLink.push_compressed` and the sync point rely
    on: `requests` yields one update's messages (header, chunks, commit) and
    remembers what it sent; `settle` then says whether the round applied it.
    Implemented by `client.compressed.CompressedUpdates` and, under secure
    aggregation, `client.secure.SecureUpdates`.
    """

    config: CodecConfig
    """The codec; signatures bind its parameters."""
    feedback: ErrorFeedback
    """The residual e: what was not sent yet (and what `settle` gives back)."""
    chunk_bytes: int
    """Payload bytes per chunk."""
    payload_bytes: int
    """Payload bytes of the last update encoded."""

    def requests(
        self,
        credentials: Credentials,
        meta: UpdateMeta,
        delta: torch.Tensor,
        signing: Signing | None = None,
    ) -> AsyncIterator[coordinator_pb2.PushUpdateRequest | bytes]:
        """One update's messages for `delta`, signed with `signing` if given."""
        ...

    def settle(self, applied: bool) -> bool:
        """Close the last update's books; True if it went back into e (rebase)."""
        ...


async def payload_digest(payload: bytes | memoryview, hasher: Hasher) -> bytes:
    """A chunk payload's digest (`UpdateSigner.hash`), off the loop when it is big."""
    if len(payload) < HASH_IN_THREAD_BYTES:
        return hasher(payload)
    return await asyncio.to_thread(hasher, payload)


def end_of_update(
    signer: UpdateSigner | None, num_chunks: int
) -> coordinator_pb2.PushUpdateRequest:
    """The commit: signed over the chain when signing, else just the count."""
    if signer is not None:
        return commit_message(signer)
    return coordinator_pb2.PushUpdateRequest(
        commit=coordinator_pb2.UpdateCommit(num_chunks=num_chunks)
    )


@dataclass(frozen=True, slots=True)
class PushResult:
    """The coordinator's acknowledgement of a committed update."""

    round_id: int
    updates_in_round: int
    bytes_sent: int
    """Payload bytes sent (4 per coordinate)."""
    update_sha256: str = ""
    """The update's digest as the coordinator verified it (hex; "" unsigned)."""


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
    request = coordinator_pb2.PushUpdateRequest(
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
            round_nonce=meta.round_nonce,
            base_model_sha256=meta.base_sha256,
            shard_index=meta.shard[0],
            shard_count=meta.shard[1],
        )
    )
    record_dp_to_proto(meta.record_dp, request.header)
    if meta.compute_s is not None:
        request.header.compute_s = meta.compute_s
    if meta.eval_loss is not None:
        request.header.eval_loss = meta.eval_loss
        request.header.eval_version = meta.eval_version
    return request


async def update_requests(
    credentials: Credentials,
    meta: UpdateMeta,
    flat: torch.Tensor,
    chunk_bytes: int,
    signing: Signing | None = None,
) -> AsyncIterator[coordinator_pb2.PushUpdateRequest | bytes]:
    """Yield one update's messages: header, chunks in order, commit.

    Chunks come pre-encoded (`wire.frames`): one payload copy instead of three.
    With `signing`, every message is signed as the coordinator requires.

    An async generator, so grpc.aio pulls and writes one chunk at a time and
    encoding the next chunk overlaps sending the previous one. The chunks
    are slices of `flat`, which must not change until the push finishes.
    """
    values = fp32_le_array(flat)
    header = update_header(credentials, meta, values.size, common_pb2.CODEC_DENSE_FP32)
    signer = signing.sign_header(header) if signing is not None else None
    yield header
    num_chunks = 0
    chunks = iter_chunks(values.data, chunk_bytes, itemsize=FP32_BYTES)
    hashed = hashed_ahead(chunks, None if signer is None else signer.hash)
    async for seq, (byte_offset, view, sha) in aenumerate(hashed):
        offset, count = byte_offset // FP32_BYTES, len(view) // FP32_BYTES
        proof = None
        if signer is not None and sha is not None:
            proof = signer.sign_chunk(seq, offset, count, sha)
        yield encode_update_chunk(seq, offset, count, view, proof)
        num_chunks = seq + 1
    yield end_of_update(signer, num_chunks)


async def hashed_ahead(
    chunks: Iterator[tuple[int, memoryview]], hasher: Hasher | None
) -> AsyncIterator[tuple[int, memoryview, bytes | None]]:
    """(byte offset, view, digest or None) per chunk, hashing one chunk ahead.

    The next chunk's payload is hashed on a worker thread while the caller
    encodes and sends this one, so a signed push costs little more wall
    time than an unsigned one when a core is free.
    """
    loop = asyncio.get_running_loop()

    def start(chunk: tuple[int, memoryview] | None) -> asyncio.Future[bytes] | None:
        if chunk is None or hasher is None:
            return None
        return loop.run_in_executor(None, hasher, chunk[1])

    current = next(chunks, None)
    hashing = start(current)
    while current is not None:
        following = next(chunks, None)
        sha = await hashing if hashing is not None else None
        hashing = start(following)
        yield current[0], current[1], sha
        current = following


async def aenumerate(items: AsyncIterator[T]) -> AsyncIterator[tuple[int, T]]:
    """`enumerate` for async iterators."""
    index = 0
    async for item in items:
        yield index, item
        index += 1


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
    signing: Signing | None = None,
) -> PushResult:
    """Stream one raw float32 update and wait for its acknowledgement.

    Args:
        push: `push_method(channel)` on the current loop's channel.
        credentials: From Join.
        meta: Header fields.
        flat: 1-D contiguous float32 CPU vector, `num_coordinates` long.
        chunk_bytes: Payload bytes per chunk (the round config's value).
        timeout_s: Deadline of the whole stream.
        signing: Key and context to sign with; None sends unsigned.

    Raises:
        See `stream_update`.
    """
    requests = update_requests(credentials, meta, flat, chunk_bytes, signing)
    response = await stream_update(push, requests, timeout_s)
    sent = flat.numel() * FP32_BYTES
    log.debug("update_sent", round=response.round_id, kind=meta.kind, bytes=sent)
    return push_result(response, sent)


def push_result(response: coordinator_pb2.PushUpdateResponse, sent: int) -> PushResult:
    """The acknowledgement as the client reports it."""
    return PushResult(
        response.round_id,
        response.updates_in_round,
        sent,
        response.update_sha256.hex(),
    )


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
        # The first message is built before the stream opens: building it
        # may mean masking or signing a whole vector, and a stream that stays
        # silent past `first_message_timeout_s` is cut by the coordinator.
        iterator = aiter(requests)
        first = await anext(iterator)
        call = push(timeout=timeout_s)
        try:
            await call.write(first)
            async for request in iterator:
                await call.write(request)
            await call.done_writing()
        except asyncio.InvalidStateError:
            pass  # the call already ended; `await call` below says how
        return await call
