"""Checking a dense update's chunks as they stream in.

Every chunk is validated (order, range, size, payload length, NaN/Inf)
*before* its values go anywhere, because the coordinator adds them straight
into the round's sum and cannot take them out again. `check` returns the
values as a float32 view of the payload: no copy until they are added.
"""

from __future__ import annotations

import numpy as np

from fedgrpc.compress import BlockCodec, DecodedBlock
from fedgrpc.errors import IncompleteUpdateError, InvalidUpdateError
from fedgrpc.wire.chunking import ChunkOrder
from fedgrpc.wire.spec import ModelSpec

FLOAT32_BYTES = 4


class ChunkStream:
    """What every update's chunk check shares: order, byte count, the commit."""

    def __init__(self, num_coordinates: int, max_count: int) -> None:
        self.num_coordinates = num_coordinates
        self.max_count = max_count
        # Chunks may be smaller than max_count; tiling already bounds their number.
        self.order = ChunkOrder(num_coordinates, max_chunks=num_coordinates)
        self.payload_bytes = 0

    def finish(self, num_chunks: int) -> None:
        """Check the commit against what arrived.

        Raises:
            InvalidUpdateError: the commit's chunk count differs from the
                chunks received, or the chunks do not cover every coordinate.
        """
        if num_chunks != self.order.next_seq:
            raise InvalidUpdateError(
                f"commit says {num_chunks} chunks but {self.order.next_seq} arrived"
            )
        if not self.order.is_complete:
            raise InvalidUpdateError(
                f"commit after {self.order.next_offset} of {self.num_coordinates} "
                "coordinates; every coordinate must be sent"
            )

    def missing_commit(self) -> IncompleteUpdateError:
        """The error for a stream that ended without its commit."""
        return IncompleteUpdateError(
            f"the update stream ended after {self.order.next_seq} chunks without a "
            "commit; the update was discarded, send it again"
        )


class DenseChunkCheck(ChunkStream):
    """One dense float32 update's chunks, checked in order against its header."""

    def __init__(self, num_coordinates: int, chunk_bytes: int) -> None:
        super().__init__(num_coordinates, max(1, chunk_bytes // FLOAT32_BYTES))

    def check(
        self, seq: int, offset: int, count: int, payload: bytes | memoryview
    ) -> np.ndarray:
        """Validate one chunk and return its values (a view of `payload`).

        Raises:
            InvalidUpdateError: out of order or range, over the chunk size,
                payload length not `count` float32s, or non-finite values.
                A rejected chunk leaves the check's state unchanged.
        """
        if count > self.max_count:
            raise InvalidUpdateError(
                f"chunk {seq} carries {count} coordinates, more than the "
                f"{self.max_count} that fit in chunk_bytes"
            )
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
        self.order.accept(seq, offset, count)  # last: a rejected chunk changes nothing
        self.payload_bytes += len(payload)
        return values


class CodecChunkCheck(ChunkStream):
    """One compressed update's chunks: order, block size, then the codec's decoder.

    Each chunk carries one block of at most `block_coordinates` coordinates;
    the codec validates the payload (lengths, index order and range, finite
    scales and values) and returns what to add. Same interface as
    `DenseChunkCheck`, so the servicer treats both alike.
    """

    def __init__(
        self, spec: ModelSpec, codec: BlockCodec, block_coordinates: int
    ) -> None:
        super().__init__(spec.num_coordinates, block_coordinates)
        self.spec = spec
        self.codec = codec

    def check(
        self, seq: int, offset: int, count: int, payload: bytes | memoryview
    ) -> DecodedBlock:
        """Validate and decode one block.

        Raises:
            InvalidUpdateError: out of order or range, a block over the
                announced size, or a payload the codec rejects (the message
                names the chunk and its coordinates).
        """
        if count > self.max_count:
            raise InvalidUpdateError(
                f"chunk {seq} carries {count} coordinates, more than the announced "
                f"block size of {self.max_count}"
            )
        try:
            block = self.codec.decode(payload, count)
        except InvalidUpdateError as exc:
            where = f"coordinates {offset}..{offset + count}"
            if 0 <= offset < self.num_coordinates:
                where += f", tensor {self.spec.tensor_at(offset).name!r}"
            raise InvalidUpdateError(f"chunk {seq} ({where}): {exc}") from exc
        self.order.accept(seq, offset, count)  # last: a rejected chunk changes nothing
        self.payload_bytes += len(payload)
        return block
