"""Bit-packing by groups (large inputs) is byte-for-byte the bit-matrix packing."""

from __future__ import annotations

import numpy as np
import pytest

from fedgrpc.compress import bitpack
from fedgrpc.compress.bitpack import GROUP_MIN_VALUES, pack_bits, unpack_bits
from fedgrpc.errors import InvalidUpdateError


def _bit_matrix_pack(values: np.ndarray, width: int) -> bytes:
    """The spec, written the slow obvious way: value i at bits i*w .. i*w + w - 1."""
    shifts = np.arange(width, dtype=np.uint64)[:, None]
    bits = ((values.astype(np.uint64)[None, :] >> shifts) & np.uint64(1)).astype(
        np.uint8
    )
    return np.packbits(bits.T.ravel(), bitorder="little").tobytes()


@pytest.mark.parametrize("width", [1, 3, 7, 8, 11, 13, 16, 17, 24, 31, 32])
@pytest.mark.parametrize("extra", [0, 1, 63, 1000])
def test_large_inputs_pack_and_unpack_exactly_as_the_spec(
    width: int, extra: int
) -> None:
    count = GROUP_MIN_VALUES + extra
    rng = np.random.default_rng(width * 7919 + extra)
    values = rng.integers(0, 1 << width, count, dtype=np.uint64)

    body = pack_bits(values, width)

    assert body == _bit_matrix_pack(values, width)
    assert len(body) == bitpack.packed_size(count, width)
    assert np.array_equal(unpack_bits(body, count, width), values)


def test_large_ring_sized_input_round_trips_from_uint16() -> None:
    values = np.random.default_rng(3).integers(0, 1 << 13, 100_003, dtype=np.uint16)

    body = pack_bits(values, 13)

    assert body == _bit_matrix_pack(values, 13)
    assert np.array_equal(unpack_bits(body, values.size, 13), values)


def test_large_input_with_padding_bits_set_is_refused() -> None:
    count = GROUP_MIN_VALUES + 1  # 4097 x 13 bits: 5 padding bits in the last byte
    body = bytearray(pack_bits(np.ones(count, dtype=np.uint16), 13))
    body[-1] |= 0x80

    with pytest.raises(InvalidUpdateError, match="padding"):
        unpack_bits(bytes(body), count, 13)
