"""Reassembling a chunked dense update into one float32 vector, checking as it goes.

Each chunk is validated (order, range, payload length, NaN/Inf) and copied
straight into a preallocated staging vector with one memcpy; nothing reaches
a round until `finish` has checked the commit. The staging vector is then
handed over (no copy) to the aggregate.
"""

from __future__ import annotations

import numpy as np
import torch

from fedgrpc.errors import IncompleteUpdateError, InvalidUpdateError
from fedgrpc.wire.chunking import ChunkOrder

FLOAT32_BYTES = 4


class DenseUpdateAssembler:
    """One update's chunks -> a float32 vector of `num_coordinates`."""

    def __init__(
        self,
        num_coordinates: int,
        chunk_bytes: int,
        staging: torch.Tensor | None = None,
    ) -> None:
        self.num_coordinates = num_coordinates
        self.max_count = max(1, chunk_bytes // FLOAT32_BYTES)
        # Chunks may be smaller than chunk_bytes; tiling already bounds their number.
        self.order = ChunkOrder(num_coordinates, max_chunks=num_coordinates)
        if staging is None:
            staging = torch.empty(num_coordinates, dtype=torch.float32)
        elif staging.dtype != torch.float32 or staging.shape != (num_coordinates,):
            raise ValueError("staging must be a float32 vector of num_coordinates")
        self.staging = staging
        self._staging_np = self.staging.numpy()
        self.payload_bytes = 0

    def add(
        self, seq: int, offset: int, count: int, payload: bytes | memoryview
    ) -> None:
        """Check one chunk and copy its values into place.

        Raises:
            InvalidUpdateError: out of order or range, over the chunk size,
                payload length not `count` float32s, or non-finite values.
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
        self._staging_np[offset : offset + count] = values
        self.payload_bytes += len(payload)

    def finish(self, num_chunks: int) -> torch.Tensor:
        """Check the commit against what arrived; return the staging vector.

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
        return self.staging

    def missing_commit(self) -> IncompleteUpdateError:
        """The error for a stream that ended without its commit."""
        return IncompleteUpdateError(
            f"the update stream ended after {self.order.next_seq} chunks without a "
            "commit; the update was discarded, send it again"
        )
