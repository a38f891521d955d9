"""Checking an update's chunks as they stream in.

Every chunk is validated in full *before* its values go anywhere, because
the coordinator adds them straight into the round's sum and cannot take
them out again: position (order, range, size), then authenticity (chain
link, payload SHA-256, signature; `crypto.signing.UpdateVerifier`), then
content (payload length, decodable, NaN/Inf). `check` returns the values as
a float32 view of the payload (dense) or a decoded block: no copy until
they are added. The payload's SHA-256 is computed by the caller, which can
hash on a worker thread.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import numpy as np

from fedgrpc.compress import BlockCodec, DecodedBlock
from fedgrpc.crypto.signing import ChunkProof, CommitProof, UpdateVerifier
from fedgrpc.domain.chunks import ChunkOrder
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.errors import BadSignatureError, IncompleteUpdateError, InvalidUpdateError

FLOAT32_BYTES = 4
_UNSIGNED = (
    "carries no signature, but this coordinator requires signed updates "
    "(RoundConfig.update_signatures_required); upgrade the client"
)


Values = TypeVar("Values")


class ChunkStream(Generic[Values]):
    """What every update's chunk check shares: order, size, authenticity, the commit.

    `check` runs the steps in the one safe order for every kind of update;
    a subclass supplies only `_decode` (the content checks of its payload
    format) and how its size limit reads in an error.
    `verifier` is None only when the coordinator runs with signatures off.
    """

    UNIT = "coordinates"
    """What `count` counts, in error messages."""

    def __init__(
        self,
        num_coordinates: int,
        max_count: int,
        verifier: UpdateVerifier | None = None,
    ) -> None:
        self.num_coordinates = num_coordinates
        self.max_count = max_count
        self.verifier = verifier
        # Chunks may be smaller than max_count; tiling already bounds their number.
        self.order = ChunkOrder(num_coordinates, max_chunks=num_coordinates)
        self.payload_bytes = 0

    def check(
        self,
        seq: int,
        offset: int,
        count: int,
        payload: bytes | memoryview,
        proof: ChunkProof | None = None,
        payload_sha256: bytes | None = None,
    ) -> Values:
        """Validate one chunk in full, then return its values for the sum.

        Raises:
            IncompleteUpdateError: out of order, or a broken chain link.
            BadSignatureError: see `authenticate`.
            InvalidUpdateError: out of range, over the size limit, or a
                payload `_decode` refuses.
        """
        self.order.check(seq, offset, count)
        if count > self.max_count:
            raise InvalidUpdateError(
                f"chunk {seq} carries {count} {self.UNIT}, more than "
                f"{self._limit_text()}"
            )
        self.authenticate(seq, offset, count, payload_sha256, proof)
        values = self._decode(seq, offset, count, payload)
        self.order.advance(count)
        self.payload_bytes += len(payload)
        return values

    def _limit_text(self) -> str:
        return f"the {self.max_count} that fit in chunk_bytes"

    def _decode(
        self, seq: int, offset: int, count: int, payload: bytes | memoryview
    ) -> Values:
        """The payload's values, or InvalidUpdateError naming chunk `seq`."""
        raise NotImplementedError

    def authenticate(
        self,
        seq: int,
        offset: int,
        count: int,
        payload_sha256: bytes | None,
        proof: ChunkProof | None,
    ) -> None:
        """Check the chunk's chain link, payload hash and signature (if signed).

        Raises:
            IncompleteUpdateError: the chain link is wrong (DATA_LOSS).
            BadSignatureError: no proof, a payload that is not the one signed,
                or a signature that does not verify (PERMISSION_DENIED).
        """
        if self.verifier is None:
            return
        unsigned = proof is not None and not proof.signature
        if (
            proof is None
            or payload_sha256 is None
            or (unsigned and self.verifier.require_chunk_signatures)
        ):
            raise BadSignatureError(f"chunk {seq} {_UNSIGNED}")
        self.verifier.verify_chunk(seq, offset, count, payload_sha256, proof)

    def finish(self, num_chunks: int, proof: CommitProof | None = None) -> bytes:
        """Check the commit against what arrived; returns the update's digest.

        The digest is the verified chain head, or b"" with signatures off.

        Raises:
            IncompleteUpdateError: the commit's chunk count differs from the
                chunks received, or the chunks do not cover every coordinate.
            BadSignatureError: the commit is unsigned or its signature fails.
        """
        if num_chunks != self.order.next_seq:
            raise IncompleteUpdateError(
                f"commit says {num_chunks} chunks but {self.order.next_seq} arrived; "
                "chunks were lost: resend the whole update"
            )
        if not self.order.is_complete:
            raise IncompleteUpdateError(
                f"commit after {self.order.next_offset} of {self.num_coordinates} "
                "coordinates; every coordinate must be sent"
            )
        if self.verifier is None:
            return b""
        if proof is None or not proof.signature:
            raise BadSignatureError(f"the commit {_UNSIGNED}")
        return self.verifier.verify_commit(proof)

    def missing_commit(self) -> IncompleteUpdateError:
        """The error for a stream that ended without its commit."""
        return IncompleteUpdateError(
            f"the update stream ended after {self.order.next_seq} chunks without a "
            "commit; the update was discarded, send it again"
        )


class DenseChunkCheck(ChunkStream[np.ndarray]):
    """One dense float32 update's chunks, checked in order against its header."""

    def __init__(
        self,
        num_coordinates: int,
        chunk_bytes: int,
        verifier: UpdateVerifier | None = None,
    ) -> None:
        super().__init__(
            num_coordinates, max(1, chunk_bytes // FLOAT32_BYTES), verifier
        )

    def _decode(
        self, seq: int, offset: int, count: int, payload: bytes | memoryview
    ) -> np.ndarray:
        """A float32 view of `payload`: `count` finite values, no copy."""
        if len(payload) != count * FLOAT32_BYTES:
            raise InvalidUpdateError(
                f"chunk {seq} has {len(payload)} payload bytes but {count} float32 "
                f"coordinates need {count * FLOAT32_BYTES}"
            )
        values = np.frombuffer(payload, dtype="<f4")
        if not np.isfinite(values).all():
            raise InvalidUpdateError(
                f"chunk {seq} (coordinates {offset}..{offset + count}) contains NaN "
                "or Inf; the client's training diverged or its buffer is corrupt"
            )
        return values


class CodecChunkCheck(ChunkStream[DecodedBlock]):
    """One compressed update's chunks: order, block size, then the codec's decoder.

    Each chunk carries one block of at most `block_coordinates` coordinates;
    the codec validates the payload (lengths, index order and range, finite
    scales and values) and returns what to add. Same interface as
    `DenseChunkCheck`, so the servicer treats both alike.
    """

    def __init__(
        self,
        spec: ModelSpec,
        codec: BlockCodec,
        block_coordinates: int,
        verifier: UpdateVerifier | None = None,
        span: tuple[int, int] | None = None,
    ) -> None:
        """Check one coded update of `spec` (or of its `span`).

        `span`: the update covers coordinates [start, stop) of the model (a
        streaming fragment); None: all of them.
        """
        start, stop = span or (0, spec.num_coordinates)
        super().__init__(stop - start, block_coordinates, verifier)
        self.spec = spec
        self.codec = codec
        self.origin = start

    def _limit_text(self) -> str:
        return f"the announced block size of {self.max_count}"

    def _decode(
        self, seq: int, offset: int, count: int, payload: bytes | memoryview
    ) -> DecodedBlock:
        """The codec's decoded block; its refusals name the chunk and tensor."""
        try:
            return self.codec.decode(payload, count)
        except InvalidUpdateError as exc:
            where = f"coordinates {offset}..{offset + count}"
            if 0 <= offset < self.num_coordinates:
                tensor = self.spec.tensor_at(self.origin + offset)
                where += f", tensor {tensor.name!r}"
            raise InvalidUpdateError(f"chunk {seq} ({where}): {exc}") from exc
