"""Fixed-width bit-packing: k unsigned integers of w bits in ceil(k·w / 8) bytes.

Shared by the top-k index coding (gaps) and the secure-aggregation ring
(masked values of m = value_bits + ceil(log2 n) bits, which would otherwise
travel as 16-bit words: 13 bits at n = 32 is 19 % fewer bytes). Value i
occupies bits i·w .. i·w + w - 1, least significant bit first, in a
little-endian byte stream; padding bits in the last byte are zero, and a
decoder refuses them otherwise, so every value list has exactly one
encoding (what is signed is what is meant).

Vectorised: packing builds a (w, k) bit matrix; unpacking reads each value
from the one or two little-endian 64-bit words it spans (w <= 32).
"""

from __future__ import annotations

import numpy as np

from fedgrpc.errors import InvalidUpdateError

MAX_WIDTH = 32
"""Widest value supported: one value then spans at most two 64-bit words."""


def packed_size(count: int, width: int) -> int:
    """Bytes that `count` values of `width` bits pack into."""
    return (count * width + 7) // 8


def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Pack unsigned `values` (each < 2**width) into `packed_size` bytes."""
    if not 0 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width {width} is outside 0..{MAX_WIDTH}")
    if width == 0 or values.size == 0:
        return b""
    wide = values.astype(np.uint64, copy=False)
    # (width, k) keeps the long axis innermost; the transpose gives the wire's
    # value-major, least-significant-bit-first order.
    shifts = np.arange(width, dtype=np.uint64)[:, None]
    bits = ((wide[None, :] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.T.ravel(), bitorder="little").tobytes()


def unpack_bits(
    body: bytes | memoryview, count: int, width: int, what: str = "bit-packed body"
) -> np.ndarray:
    """`count` values of `width` bits as uint64, refusing a wrong length or padding.

    Raises:
        InvalidUpdateError: `body` is not exactly `packed_size(count, width)`
            bytes, or its padding bits are not zero (`what` names it).
    """
    expected = packed_size(count, width)
    if len(body) != expected:
        raise InvalidUpdateError(
            f"{what} has {len(body)} bytes, expected {expected} for {count} "
            f"values of {width} bits"
        )
    if width == 0:
        return np.zeros(count, dtype=np.uint64)
    if (count * width) % 8 and body[-1] >> ((count * width) % 8):
        raise InvalidUpdateError(f"{what}: padding is not zero after the last value")
    # Read the body as little-endian uint64 words (zero-padded by one word):
    # value i starts at bit i*width and, as width <= 32, spans at most two words.
    padded = np.zeros(expected // 8 + 2, dtype="<u8")
    padded.view(np.uint8)[:expected] = np.frombuffer(body, dtype=np.uint8)
    start = np.arange(count, dtype=np.uint64) * np.uint64(width)
    word = (start >> np.uint64(6)).astype(np.int64)
    shift = start & np.uint64(63)
    low = padded[word] >> shift
    # The next word's bits land above the 64 - shift bits `low` holds; for
    # shift == 0 they are shifted out entirely, so mask instead of shifting by 64.
    high = padded[word + 1] << ((np.uint64(64) - shift) & np.uint64(63))
    high[shift == 0] = 0
    values: np.ndarray = (low | high) & np.uint64((1 << width) - 1)
    return values
