"""Masked updates on the wire: ring elements bit-packed, and their chunk checks.

The PushUpdate half of secure aggregation (CODEC_SECAGG_RING): the client
packs its masked ring elements at the ring's exact width m, and the
coordinator checks each chunk as it streams in (order, signature chain,
length, zero padding) before its values may join the ring sum. The Session
half, the SecAgg protocol messages, is `wire.secagg`.
"""

from __future__ import annotations

import numpy as np

from fedgrpc.compress.bitpack import pack_bits, unpack_bits
from fedgrpc.crypto.signing import UpdateVerifier
from fedgrpc.errors import InvalidUpdateError
from fedgrpc.secagg.ring import Ring
from fedgrpc.wire.assemble import ChunkStream


def ring_values_per_chunk(ring: Ring, chunk_bytes: int) -> int:
    """Ring elements one chunk carries: as many m-bit values as fit its bytes."""
    return max(1, chunk_bytes * 8 // ring.bits)


def encode_ring_values(values: np.ndarray, ring: Ring) -> bytes:
    """Ring elements bit-packed at the ring's exact width m (`compress.bitpack`).

    m = value_bits + ceil(log2 n) is rarely a whole number of bytes (13 bits
    at n = 32 in 16-bit words wastes 19 %), and a masked value is uniform, so
    nothing else compresses it.
    """
    return pack_bits(values, ring.bits)


def decode_ring_values(
    payload: bytes | memoryview, count: int, ring: Ring
) -> np.ndarray:
    """`count` ring elements of `payload` in the ring's storage dtype.

    Raises:
        InvalidUpdateError: the payload is not exactly ceil(count·m / 8) bytes
            or has non-zero padding.
    """
    values = unpack_bits(payload, count, ring.bits, "ring chunk payload")
    return values.astype(ring.dtype)


class RingChunkCheck(ChunkStream[np.ndarray]):
    """One masked update's chunks: order, authenticity, then ring elements.

    Positions play the role of coordinates: chunk (offset, count) carries the
    ring elements of positions offset..offset+count of the announced index set.
    """

    UNIT = "ring elements"

    def __init__(
        self,
        num_positions: int,
        chunk_bytes: int,
        ring: Ring,
        verifier: UpdateVerifier | None = None,
    ) -> None:
        self.ring = ring
        super().__init__(
            num_positions, ring_values_per_chunk(ring, chunk_bytes), verifier
        )

    def _decode(
        self, seq: int, offset: int, count: int, payload: bytes | memoryview
    ) -> np.ndarray:
        """The ring elements; a wrong length or non-zero padding is refused."""
        try:
            return decode_ring_values(payload, count, self.ring)
        except InvalidUpdateError as exc:
            raise InvalidUpdateError(f"chunk {seq}: {exc}") from exc
