"""Index coding: a block's sorted top-k positions to bytes and back.

Positions are coded as gaps: g_0 = i_0 and g_j = i_j - i_{j-1} - 1, so gaps
are >= 0 and *any* decoded gaps give strictly increasing positions; only the
last position needs a range check. The gaps are then written as whichever is
smaller (ties go to bit-packing, which decodes faster):

- LEB128 varint: 7 bits per byte, high bit = "more bytes follow". Wins when
  a few large gaps would widen every bit-packed entry.
- fixed-width bit-packing: every gap in w = bit_length(max gap) bits,
  little-endian bit order. Wins for evenly spread positions (top-k of noise).

and zstd level 1 runs over that body, kept only if it is smaller. One
header byte records the choice:

    bit 7       body is a zstd frame (of the varint / bit-packed bytes)
    bit 6       varint (bits 0-5 must then be 0)
    bits 0-5    bit-packing width w, 0..32

Everything is vectorised: numpy handles each block's k gaps as arrays (a
(k, 5) byte matrix for varints, a (k, w) bit matrix for packing).
"""

from __future__ import annotations

import math

import numpy as np

from fedgrpc.compress.bitpack import pack_bits, unpack_bits
from fedgrpc.compress.blocks import I64Array
from fedgrpc.compress.zstd import compress_if_smaller, decompress_bounded
from fedgrpc.errors import InvalidUpdateError

_ZSTD = 0x80
_VARINT = 0x40
_WIDTH = 0x3F
_MAX_WIDTH = 32  # gaps < count <= 2**31
_MAX_VARINT_BYTES = 5  # ceil(32 / 7)
_GROUPS = np.arange(_MAX_VARINT_BYTES, dtype=np.uint64)


def encode_indices(indices: I64Array) -> bytes:
    """Code strictly increasing, non-negative `indices` as header byte + body."""
    gaps = np.diff(indices, prepend=-1).astype(np.uint64)
    gaps -= np.uint64(1)
    width = int(gaps.max()).bit_length() if gaps.size else 0
    lengths = _varint_lengths(gaps)
    if int(lengths.sum()) < (gaps.size * width + 7) // 8:
        header, body = _VARINT, _encode_varints(gaps, lengths)
    else:
        header, body = width, pack_bits(gaps, width)
    frame = compress_if_smaller(body)
    if frame is not None:
        header, body = header | _ZSTD, frame
    return bytes((header,)) + body


def decode_indices(data: memoryview, k: int, count: int) -> I64Array:
    """Decode exactly `k` positions, all in [0, count), strictly increasing.

    Raises:
        InvalidUpdateError: an unknown header, a body of the wrong length, a
            bad zstd frame, or a position outside the block.
    """
    if len(data) < 1:
        raise InvalidUpdateError("index section is empty: expected a header byte")
    header, body = data[0], data[1:]
    varint, width = bool(header & _VARINT), header & _WIDTH
    if (varint and width) or width > _MAX_WIDTH:
        raise InvalidUpdateError(f"index header 0x{header:02x} is not a known coding")
    if header & _ZSTD:
        body = memoryview(decompress_bounded(body, _MAX_VARINT_BYTES * k))
    gaps = (
        _decode_varints(body, k)
        if varint
        else unpack_bits(body, k, width, "bit-packed index body")
    )
    return _positions(gaps, count)


def max_index_bytes(k: int, count: int) -> int:
    """Upper bound on `encode_indices` output for k of `count` positions."""
    width = max(count - 1, 0).bit_length()
    return 1 + (k * width + 7) // 8  # zstd and varint are used only when smaller


def estimated_index_bytes(k: int, count: int) -> int:
    """Typical size for k spread-out positions of `count` (for planning only).

    Top-k of noise leaves roughly geometric gaps of mean count/k, whose
    largest of k is about (count/k)*ln(k): bit-packing then needs that many
    bits per gap, and zstd rarely pays on such bit-packed bytes.
    """
    if k == 0:
        return 1
    largest_gap = count / k * max(math.log(k), 1.0)
    return 1 + math.ceil(k * math.ceil(math.log2(largest_gap + 1)) / 8)


def _positions(gaps: np.ndarray, count: int) -> I64Array:
    if gaps.size == 0:
        return np.zeros(0, dtype=np.int64)
    # Bound every gap first so the running sum cannot overflow int64.
    if int(gaps.max()) >= count:
        raise InvalidUpdateError(f"index gap {int(gaps.max())} exceeds count {count}")
    positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if positions[-1] >= count:
        raise InvalidUpdateError(
            f"index {int(positions[-1])} is out of range: expected < {count}"
        )
    return positions


def _varint_lengths(gaps: np.ndarray) -> np.ndarray:
    """Bytes per gap: 1 + how many 7-bit thresholds it reaches."""
    lengths = np.ones(gaps.size, dtype=np.int64)
    for group in range(1, _MAX_VARINT_BYTES):  # 4 vectorised passes
        lengths += gaps >= np.uint64(1 << (7 * group))
    return lengths


def _encode_varints(gaps: np.ndarray, lengths: np.ndarray) -> bytes:
    ends = np.cumsum(lengths)
    out = np.empty(int(ends[-1]) if ends.size else 0, dtype=np.uint8)
    starts = ends - lengths
    # Byte column by byte column (at most 5 passes, each vectorised over the
    # gaps): a (k, 5) matrix has a 5-long inner loop and ran 4x slower.
    for j in range(int(lengths.max(initial=0))):
        rows = np.flatnonzero(lengths > j)
        group = (gaps[rows] >> np.uint64(7 * j)) & np.uint64(0x7F)
        byte = group.astype(np.uint8) | ((lengths[rows] > j + 1) * 0x80).astype(
            np.uint8
        )
        out[starts[rows] + j] = byte
    return out.tobytes()


def _decode_varints(body: memoryview, k: int) -> np.ndarray:
    raw = np.frombuffer(body, dtype=np.uint8)
    last = np.flatnonzero(raw < 0x80)  # the final byte of each varint
    if last.size != k or (raw.size and raw[-1] >= 0x80):
        raise InvalidUpdateError(
            f"varint index body holds {last.size} complete values, expected {k}"
        )
    if k == 0:
        return np.zeros(0, dtype=np.uint64)
    starts = np.concatenate(([0], last[:-1] + 1))
    lengths = last - starts + 1
    if int(lengths.max()) > _MAX_VARINT_BYTES:
        raise InvalidUpdateError("varint index longer than 5 bytes: payload is corrupt")
    # Byte b of a varint carries bits 7b..7b+6 of its value.
    place = np.arange(raw.size) - np.repeat(starts, lengths)
    parts = (raw & np.uint8(0x7F)).astype(np.uint64) << (
        np.uint64(7) * place.astype(np.uint64)
    )
    return np.add.reduceat(parts, starts)
