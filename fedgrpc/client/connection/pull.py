"""Pulling the global weights: a checked PullModel stream into a reused buffer.

The client checks everything the coordinator sends (header digest and size,
chunk order and coverage), so a coordinator bug cannot silently corrupt the
model, and, with a `ModelTrust`, that the header is signed by the
coordinator's key and the bytes hash to the SHA-256 it signed, so nobody in
between can swap the weights. Each chunk is hashed and copied once,
straight into the native-byte buffer that `LocalRun` loads from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedgrpc._proto.v1 import coordinator_pb2
from fedgrpc.client.connection.channel import Credentials
from fedgrpc.client.status import translated
from fedgrpc.crypto.keys import PublicKey
from fedgrpc.domain.chunks import ChunkOrder
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.errors import (
    BadSignatureError,
    IncompleteUpdateError,
    InvalidUpdateError,
    ModelMismatchError,
)
from fedgrpc.log import get_logger
from fedgrpc.wire.signed import model_statement

if TYPE_CHECKING:
    from fedgrpc._proto.v1.coordinator_pb2_grpc import CoordinatorServiceAsyncStub

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PulledModel:
    """Global weights in native-byte layout (`ModelSpec` order, own dtypes)."""

    version: int
    round_id: int
    buffer: torch.Tensor
    """uint8, `spec.num_bytes` long; view it with `wire.tensors.unpack_native`."""
    sha256: bytes = b""
    """SHA-256 of `buffer`, as the coordinator signed it (updates sign it as base)."""


@dataclass(frozen=True, slots=True)
class ModelTrust:
    """Whose signature models must carry: the coordinator key learned at Join."""

    coordinator_key: PublicKey
    run_id: str


class ModelReceiver:
    """Checks a PullModel stream and copies its chunks into a uint8 buffer.

    One instance per pull. Validation lives here rather than trusting the
    coordinator, so a coordinator bug cannot silently corrupt the model.
    """

    def __init__(
        self,
        spec: ModelSpec,
        buffer: torch.Tensor,
        trust: ModelTrust | None = None,
        byte_range: tuple[int, int] | None = None,
    ) -> None:
        if buffer.dtype != torch.uint8 or buffer.numel() != spec.num_bytes:
            raise ValueError(
                f"model buffer must be {spec.num_bytes} uint8 bytes, got "
                f"{buffer.numel()} {buffer.dtype}"
            )
        self.spec = spec
        self.buffer = buffer
        self._target = buffer.numpy()
        self._start, stop = byte_range or (0, spec.num_bytes)
        self._ranged = byte_range is not None
        """Only these bytes travel (a streaming fragment); the rest of `buffer`
        must already hold the same version, which the digest then proves."""
        length = stop - self._start
        self._order = ChunkOrder(length, max_chunks=max(1, length))
        self.header: coordinator_pb2.ModelHeader | None = None
        self.trust = trust
        self._hash = hashlib.sha256()

    def accept(self, message: coordinator_pb2.PullModelResponse) -> None:
        """Take the next message: the header first, then chunks in byte order.

        Raises:
            ModelMismatchError: the weights follow another model spec.
            BadSignatureError: the header is not signed by the coordinator.
            InvalidUpdateError: header missing or repeated, size mismatch,
                chunk out of range.
            IncompleteUpdateError: chunk out of order.
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
        if self.trust is not None:
            self._check_signature(header, self.trust)
        self.header = header

    @staticmethod
    def _check_signature(
        header: coordinator_pb2.ModelHeader, trust: ModelTrust
    ) -> None:
        key = trust.coordinator_key
        signed = model_statement(header, trust.run_id).encode(key.algorithm)
        try:
            key.verify(header.signature, signed)
        except BadSignatureError as exc:
            raise BadSignatureError(
                f"model version {header.model_version} is not signed by the "
                f"coordinator's key {key.short_fingerprint}: it did not come from "
                "the coordinator this client joined; refusing to load it"
            ) from exc

    def _accept_chunk(self, chunk: coordinator_pb2.ModelChunk) -> None:
        if self.header is None:
            raise InvalidUpdateError("PullModel sent a chunk before its ModelHeader")
        data = chunk.data  # upb copies on every read: read once
        if chunk.offset < self._start:
            raise InvalidUpdateError(
                f"PullModel sent bytes at {chunk.offset}, before the range asked "
                f"for (from {self._start})"
            )
        relative = chunk.offset - self._start
        self._order.accept(self._order.next_seq, relative, len(data))
        if self.trust is not None and not self._ranged:
            self._hash.update(data)  # releases the GIL; one pass, in stream order
        start = chunk.offset
        self._target[start : start + len(data)] = np.frombuffer(data, dtype=np.uint8)

    def finish(self) -> PulledModel:
        """The pulled model, once the stream ended.

        Raises:
            IncompleteUpdateError: the stream ended before covering the model.
            BadSignatureError: the bytes do not hash to the signed SHA-256.
        """
        header = self.header
        if header is None or not self._order.is_complete:
            got = self._order.next_offset
            raise IncompleteUpdateError(
                f"PullModel ended after {got} of {self.spec.num_bytes} model bytes"
            )
        if self._ranged and self.trust is not None:
            # The whole buffer: the range just pulled and the bytes we held.
            if hashlib.sha256(self._target.data).digest() != header.weights_sha256:
                raise RangeMismatchError(
                    f"model version {header.model_version}: the bytes pulled plus "
                    "those this client held do not hash to the signed SHA-256 (it "
                    "missed an earlier version's change): pull the whole model"
                )
        elif self.trust is not None and self._hash.digest() != header.weights_sha256:
            raise BadSignatureError(
                f"the bytes of model version {header.model_version} do not match the "
                "SHA-256 the coordinator signed: they were altered in transit; "
                "refusing to load them"
            )
        return PulledModel(
            header.model_version, header.round_id, self.buffer, header.weights_sha256
        )


class RangeMismatchError(InvalidUpdateError):
    """A range pull did not complete the version: the caller pulls it whole."""


async def pull_model(
    stub: CoordinatorServiceAsyncStub,
    credentials: Credentials,
    min_version: int,
    spec: ModelSpec,
    timeout_s: float,
    buffer: torch.Tensor | None = None,
    trust: ModelTrust | None = None,
    byte_range: tuple[int, int] | None = None,
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
        trust: The coordinator key and run to check the model's signature
            against; None skips the check (tests of the transfer only).
        byte_range: Only bytes [start, stop) travel (a streaming fragment):
            `buffer` must hold the rest of the same version already; the
            digest of the whole buffer is checked against the signed one.

    Raises:
        CoordinatorUnavailableError: DEADLINE_EXCEEDED (the version did not
            appear in time) or UNAVAILABLE.
        ModelMismatchError, InvalidUpdateError, IncompleteUpdateError: the
            stream does not describe this model completely and in order.
        BadSignatureError: the model is not the coordinator's (`trust`).
        RangeMismatchError: a `byte_range` pull did not complete the version.
    """
    if buffer is None:
        buffer = torch.empty(spec.num_bytes, dtype=torch.uint8)
    receiver = ModelReceiver(spec, buffer, trust, byte_range)
    start, stop = byte_range or (0, 0)
    request = coordinator_pb2.PullModelRequest(
        client_id=credentials.client_id,
        session_token=credentials.session_token,
        min_version=min_version,
        range_start=start,
        range_length=stop - start,
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
