"""Index coding: round trips, the size choice, and rejection of corrupt bodies."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgrpc.compress.index_coding import (
    decode_indices,
    encode_indices,
    max_index_bytes,
)
from fedgrpc.errors import InvalidUpdateError

ZSTD, VARINT = 0x80, 0x40


@st.composite
def index_sets(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    count = draw(st.one_of(st.integers(1, 5000), st.integers(1, 2**31 - 1)))
    chosen = draw(st.sets(st.integers(0, count - 1), max_size=400))
    return np.array(sorted(chosen), dtype=np.int64), count


def _decode(data: bytes, k: int, count: int) -> np.ndarray:
    return decode_indices(memoryview(data), k, count)


@settings(max_examples=300)
@given(index_sets())
def test_round_trip_and_size_bound(case: tuple[np.ndarray, int]) -> None:
    indices, count = case
    data = encode_indices(indices)

    decoded = _decode(data, indices.size, count)

    np.testing.assert_array_equal(decoded, indices)
    assert decoded.dtype == np.int64
    assert len(data) <= max_index_bytes(indices.size, count)


def test_dense_runs_bit_pack_at_width_zero() -> None:
    data = encode_indices(np.arange(100, 120, dtype=np.int64))
    # gaps: 100, then 0 nineteen times -> width 7 (for 100) beats varint? no:
    # varint is 20 bytes, bit-packing 20 * 7 bits = 18 bytes.
    assert data[0] & ~ZSTD == 7
    assert len(encode_indices(np.arange(0, 64, dtype=np.int64))) == 1  # width 0


def test_one_far_outlier_makes_varint_win() -> None:
    indices = np.concatenate(([0], np.arange(1_000_000, 1_000_200))).astype(np.int64)
    data = encode_indices(indices)
    # bit-packing would spend 20 bits on each of 201 gaps; varint spends 1 byte
    assert data[0] & VARINT
    np.testing.assert_array_equal(_decode(data, indices.size, 2_000_000), indices)


def test_zstd_is_used_only_when_it_shrinks_the_body() -> None:
    regular = np.arange(0, 30_000, 3, dtype=np.int64)  # constant gaps compress
    noisy = np.sort(np.random.default_rng(0).choice(65536, 600, replace=False))

    assert encode_indices(regular)[0] & ZSTD
    assert not encode_indices(noisy)[0] & ZSTD
    np.testing.assert_array_equal(
        _decode(encode_indices(regular), 10_000, 30_000), regular
    )


def _zstd(body: bytes, *, with_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=with_size).compress(body)


@pytest.mark.parametrize(
    ("data", "k", "count", "message"),
    [
        (b"", 0, 10, "index section is empty"),
        (bytes([0x21]), 0, 10, "not a known coding"),  # width 33
        (bytes([VARINT | 1]), 0, 10, "not a known coding"),
        (bytes([8, 1]), 2, 10, "has 1 bytes, expected 2"),
        (bytes([8, 5, 6]), 2, 10, "index 12 is out of range"),
        (bytes([8, 12]), 1, 10, "gap 12 exceeds count 10"),
        (bytes([3, 0xFF]), 2, 100, "padding is not zero"),
        (bytes([VARINT, 1, 0x81]), 2, 10, "holds 1 complete values, expected 2"),
        (bytes([VARINT, 1, 2, 3]), 2, 10, "holds 3 complete values"),
        (bytes([VARINT, 0x80, 0x80, 0x80, 0x80, 0x80, 0]), 1, 10, "longer than 5"),
        (bytes([ZSTD | 8]) + b"junk", 1, 10, "zstd frame header is invalid"),
        (bytes([ZSTD | 8]) + _zstd(bytes(9)), 1, 10, "declares 9 bytes, expected 0..5"),
        (bytes([ZSTD | 8]) + _zstd(b"\1", with_size=False), 1, 10, "declares -1"),
        (bytes([ZSTD | 8]) + _zstd(b"\1") + b"x", 1, 10, "corrupt"),
    ],
)
def test_corrupt_bodies_are_invalid_updates(
    data: bytes, k: int, count: int, message: str
) -> None:
    with pytest.raises(InvalidUpdateError, match=message):
        _decode(data, k, count)
