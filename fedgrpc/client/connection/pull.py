"""Pulling the global weights: a checked PullModel stream into a reused buffer.

The client checks everything the coordinator sends (header digest and size,
chunk order and coverage), so a coordinator bug cannot silently corrupt the
model, and, with a `ModelTrust`, that the header is signed by the
coordinator's key and the bytes hash to the digest it signed, so nobody in
between can swap the weights. The digest is under the hash the header names
and its signature binds (ModelHeader.weights_hash: the hash Join negotiated,
BLAKE3 or SHA-256; unset from older coordinators: SHA-256), one this client
offered. Each chunk is hashed and copied once, straight into the
native-byte buffer that `LocalRun` loads from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedgrpc._proto.v1 import coordinator_pb2
from fedgrpc.client.connection.channel import Credentials
from fedgrpc.client.connection.delta import DeltaApplier, DeltaMismatchError
from fedgrpc.client.status import translated
from fedgrpc.crypto.keys import PublicKey
from fedgrpc.crypto.statements import (
    HASH_LABELS,
    StreamHasher,
    model_digest,
    stream_hasher,
)
from fedgrpc.domain.chunks import ChunkOrder
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.domain.requests import HashName
from fedgrpc.errors import (
    BadSignatureError,
    IncompleteUpdateError,
    InvalidUpdateError,
    ModelMismatchError,
)
from fedgrpc.log import get_logger
from fedgrpc.wire.signed import model_hash_of, model_statement

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
    """Digest of `buffer` under `hash_name`, as the coordinator signed it
    (updates sign it as base; the name predates BLAKE3)."""
    bytes_received: int = 0
    """Model payload bytes this pull moved (weights, or compressed steps)."""
    delta_from: int | None = None
    """The version the compressed steps started from; None: weights travelled."""
    hash_name: HashName = "sha256"
    """The hash of `sha256` (ModelHeader.weights_hash)."""


@dataclass(frozen=True, slots=True)
class ModelTrust:
    """Whose signature models must carry: the coordinator key learned at Join."""

    coordinator_key: PublicKey
    run_id: str
    hashes: tuple[str, ...] = ("blake3", "sha256")
    """The hashes this client offered at Join: a model digest under another
    is refused (a client held to SHA-256 never trusts a BLAKE3 digest)."""


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
        held_version: int | None = None,
    ) -> None:
        """Receive into `buffer` (uint8, `spec.num_bytes`).

        `trust`: check the coordinator's signature (None: tests of the
        transfer only). `byte_range`: only those bytes travel. `held_version`:
        the version `buffer` holds intact, from which the coordinator may send
        compressed steps (ignored with a range); None: it holds none.
        """
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
        self._hash: StreamHasher | None = None
        """Set with the header: the hash it names, fed chunk by chunk."""
        self._hash_name: HashName = "sha256"
        self._held = None if byte_range is not None else held_version
        self.range_digest = False
        """The signed SHA-256 covers only `byte_range` (a parameter shard's
        model: the shard holds no other range current)."""
        self._delta: DeltaApplier | None = None
        """Set when the header announced compressed steps instead of chunks."""
        self._bytes = 0

    def request(
        self, credentials: Credentials, min_version: int
    ) -> coordinator_pb2.PullModelRequest:
        """The PullModelRequest asking for what this receiver takes."""
        start, stop = self._start, self._start + self._order.total
        request = coordinator_pb2.PullModelRequest(
            client_id=credentials.client_id,
            session_token=credentials.session_token,
            min_version=min_version,
            range_start=start if self._ranged else 0,
            range_length=stop - start if self._ranged else 0,
        )
        if self._held is not None:
            request.held_version = self._held
        return request

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
            if self._delta is not None:
                raise InvalidUpdateError(
                    "PullModel sent a chunk after announcing steps"
                )
            self._accept_chunk(message.chunk)
        elif part == "delta":
            if self._delta is None:
                raise InvalidUpdateError("PullModel sent a step it did not announce")
            self._delta.accept(message.delta)
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
        self._hash_name = model_hash_of(header)
        self._hash = stream_hasher(self._hash_name)
        if header.HasField("delta_from_version"):
            if header.delta_from_version != self._held:
                raise InvalidUpdateError(
                    f"PullModel sent steps from model version "
                    f"{header.delta_from_version}; this client holds {self._held}"
                )
            self._delta = DeltaApplier(
                self.spec,
                self.buffer,
                header.delta_from_version,
                header.model_version,
                header.delta_codec,
            )
        self.header = header

    @staticmethod
    def _check_signature(
        header: coordinator_pb2.ModelHeader, trust: ModelTrust
    ) -> None:
        key = trust.coordinator_key
        statement = model_statement(header, trust.run_id)
        if statement.hash_name not in trust.hashes:
            raise InvalidUpdateError(
                f"model version {header.model_version} carries a "
                f"{HASH_LABELS[statement.hash_name]} digest, but this client offered "
                f"only {', '.join(trust.hashes)} (ClientConfig.hashes) at Join; "
                "refusing to trust it"
            )
        signed = statement.encode(key.algorithm)
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
        if self.trust is not None and not self._ranged and self._hash is not None:
            self._hash.update(data)  # releases the GIL; one pass, in stream order
        start = chunk.offset
        self._target[start : start + len(data)] = np.frombuffer(data, dtype=np.uint8)
        self._bytes += len(data)

    def finish(self) -> PulledModel:
        """The pulled model, once the stream ended.

        Raises:
            IncompleteUpdateError: the stream ended before covering the model.
            BadSignatureError: the bytes do not hash to the signed digest.
        """
        header = self.header
        if header is not None and self._delta is not None:
            return self._finish_steps(header, self._delta)
        if header is None or not self._order.is_complete:
            got = self._order.next_offset
            raise IncompleteUpdateError(
                f"PullModel ended after {got} of {self.spec.num_bytes} model bytes"
            )
        name, label = self._hash_name, HASH_LABELS[self._hash_name]
        if self.range_digest and self.trust is not None:
            own = self._target[self._start : self._start + self._order.total]
            if model_digest(name, own.data) != header.weights_sha256:
                raise BadSignatureError(
                    f"the bytes of shard range {self._start}.. of model version "
                    f"{header.model_version} do not match the {label} digest the "
                    "shard signed: they were altered in transit; refusing to load them"
                )
        elif self._ranged and self.trust is not None:
            # The whole buffer: the range just pulled and the bytes we held.
            if model_digest(name, self._target.data) != header.weights_sha256:
                raise RangeMismatchError(
                    f"model version {header.model_version}: the bytes pulled plus "
                    f"those this client held do not hash to the signed {label} "
                    "digest (it missed an earlier version's change): pull the "
                    "whole model"
                )
        elif self.trust is not None and (
            self._hash is None or self._hash.digest() != header.weights_sha256
        ):
            raise BadSignatureError(
                f"the bytes of model version {header.model_version} do not match the "
                f"{label} digest the coordinator signed: they were altered in "
                "transit; refusing to load them"
            )
        return PulledModel(
            header.model_version,
            header.round_id,
            self.buffer,
            header.weights_sha256,
            self._bytes,
            hash_name=name,
        )

    def _finish_steps(
        self, header: coordinator_pb2.ModelHeader, delta: DeltaApplier
    ) -> PulledModel:
        """The held weights plus every step: they must hash to the signed digest.

        Checked with or without a `ModelTrust`: the digest is what proves the
        result is the coordinator's master bit for bit.
        """
        if not delta.is_complete:
            raise IncompleteUpdateError(
                f"PullModel ended before the steps to model version "
                f"{header.model_version} were complete"
            )
        name = self._hash_name
        if model_digest(name, self._target.data) != header.weights_sha256:
            raise DeltaMismatchError(
                f"model version {header.model_version}: the held version "
                f"{header.delta_from_version} plus the compressed steps do not hash "
                f"to the signed {HASH_LABELS[name]} digest: pull the whole model"
            )
        return PulledModel(
            header.model_version,
            header.round_id,
            self.buffer,
            header.weights_sha256,
            delta.bytes_received,
            header.delta_from_version,
            name,
        )


class RangeMismatchError(InvalidUpdateError):
    """A range pull did not complete the version: the caller pulls it whole."""


async def pull_model(
    stub: CoordinatorServiceAsyncStub,
    credentials: Credentials,
    min_version: int,
    timeout_s: float,
    receiver: ModelReceiver,
) -> PulledModel:
    """Download the global weights once their version is at least `min_version`.

    Args:
        stub: Async CoordinatorService stub on the current loop.
        credentials: From Join.
        min_version: The coordinator waits for this version (0: any).
        timeout_s: Deadline covering the wait and the transfer.
        receiver: Checks the stream and fills its buffer (reused across
            pulls so the downlink allocates nothing). Its `byte_range` asks
            for those bytes only (a streaming fragment): the buffer holds the
            rest of the same version, the digest of the whole is checked.
            Its `held_version` says the buffer holds that version intact: a
            coordinator with a `downlink_codec` may send the compressed steps
            from it. If they do not give the signed weights (the buffer did
            not hold it), the whole model is pulled again, with a warning.

    Raises:
        CoordinatorUnavailableError: DEADLINE_EXCEEDED (the version did not
            appear in time) or UNAVAILABLE.
        ModelMismatchError, InvalidUpdateError, IncompleteUpdateError: the
            stream does not describe this model completely and in order.
        BadSignatureError: the model is not the coordinator's (`trust`).
        RangeMismatchError: a `byte_range` pull did not complete the version.
    """
    request = receiver.request(credentials, min_version)
    call = stub.PullModel(request, timeout=timeout_s)
    try:
        with translated("PullModel"):
            async for message in call:
                receiver.accept(message)
    finally:
        call.cancel()  # no-op once finished; stops the stream if we rejected it
    try:
        pulled = receiver.finish()
    except DeltaMismatchError as exc:
        held = request.held_version
        log.warning("model_steps_mismatch", held_version=held, error=str(exc))
        whole = ModelReceiver(receiver.spec, receiver.buffer, receiver.trust)
        return await pull_model(stub, credentials, min_version, timeout_s, whole)
    if pulled.version < min_version:
        raise InvalidUpdateError(
            f"asked for model version >= {min_version}, got {pulled.version}"
        )
    return pulled
