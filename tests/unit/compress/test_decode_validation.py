"""Decoders against hostile bytes: a valid block or InvalidUpdateError, nothing else.

Warnings are errors here: a decoder that overflows or divides by zero on
garbage is one numpy setting away from crashing.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedgrpc.compress import (
    MAX_BLOCK_COORDINATES,
    DecodedBlock,
    SparseValues,
    make_codec,
    parse_codec,
)
from fedgrpc.errors import InvalidUpdateError

pytestmark = pytest.mark.filterwarnings("error")

SPECS = [
    "dense:fp32",
    "dense:bf16",
    "dense:fp16",
    "dense:int8",
    "dense:int4",
    "dense:int2",
    "topk:0.1:int8",
    "topk:0.5:int4",
    "topk:0.5:int2",
    "topk:0.2:bf16",
    "topk:1:fp32",
]


def f32(*values: float) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


def k_header(k: int) -> bytes:
    return struct.pack("<I", k)


@pytest.mark.parametrize(
    ("spec", "payload", "count", "message"),
    [
        ("dense:fp32", f32(1.0) + b"\0\0\0", 2, "has 7 bytes, expected 8"),
        ("dense:fp32", f32(1.0, np.nan), 2, "NaN or Inf"),
        ("dense:fp32", f32(1.0), -1, "block count -1 is out of range"),
        ("dense:fp32", b"", MAX_BLOCK_COORDINATES + 1, "block count"),
        ("dense:bf16", bytes([0x80, 0x7F]), 1, "NaN or Inf"),  # bf16 +Inf
        ("dense:fp16", np.array([np.inf], "<f2").tobytes(), 1, "NaN or Inf"),
        ("dense:int8", f32(-1.0) + bytes(3), 3, "scale -1.0 is invalid"),
        ("dense:int8", f32(np.nan) + bytes(3), 3, "scale nan is invalid"),
        ("dense:int8", f32(3e38) + bytes(3), 3, "scale 3.*is invalid"),
        ("dense:int8", f32(1.0) + bytes([0x80]), 1, "code -128 is unused"),
        ("dense:int8", f32(1.0, np.nan) + bytes(4097), 4097, "scale nan"),
        ("dense:int8", f32(1.0) + bytes(4097), 4097, "has 4101 bytes, expected 4105"),
        ("dense:int8", f32(1.0) + bytes(2), 3, "has 6 bytes, expected 7"),
        ("dense:int4", f32(1.0) + bytes([0x08]), 2, "code -8 is unused"),
        ("dense:int4", f32(1.0) + bytes([0x11]), 1, "padding nibble"),
        ("dense:int2", f32(-1.0) + bytes(1), 3, "int2 scale -1.0 is invalid"),
        ("dense:int2", f32(np.nan) + bytes(1), 3, "int2 scale nan is invalid"),
        ("dense:int2", f32(2e38) + bytes(1), 3, "int2 scale 1.99.*is invalid"),
        ("dense:int2", f32(1.0) + bytes([0x40]), 3, "int2 codes: padding"),
        ("dense:int2", f32(1.0) + bytes(2), 3, "has 6 bytes, expected 5"),
        ("dense:int2", f32(1.0) + bytes(33), 129, "has 37 bytes, expected 41"),
        ("topk:0.1:int8", b"\1\0", 10, "has 2 bytes: expected 4 bytes of k"),
        ("topk:0.1:int8", k_header(2) + f32(1.0) + bytes(3), 10, "claims k=2"),
        ("topk:0.1:int8", k_header(1) + f32(1.0) + bytes(1), 10, "too short"),
        ("topk:0.1:int8", k_header(1) + f32(1.0) + bytes([1, 8, 10]), 10, "gap 10"),
        ("topk:0.1:int8", k_header(1) + f32(-2.0) + bytes([1, 8, 1]), 10, "scale"),
        ("topk:1:fp32", k_header(1) + f32(np.inf) + bytes([8, 1]), 10, "NaN or Inf"),
        ("topk:1:fp32", k_header(2) + f32(1, 2) + bytes([8, 1, 9]), 10, "index 11"),
    ],
)
def test_bad_payload_is_an_invalid_update_naming_the_problem(
    spec: str, payload: bytes, count: int, message: str
) -> None:
    codec = make_codec(parse_codec(spec))
    with pytest.raises(InvalidUpdateError, match=message):
        codec.decode(payload, count)


def _assert_valid(decoded: DecodedBlock, count: int) -> None:
    assert decoded.values.dtype == np.float32
    assert np.all(np.isfinite(decoded.values))
    if isinstance(decoded, SparseValues):
        assert decoded.indices.size == decoded.values.size <= count
        assert np.all(np.diff(decoded.indices) > 0)
        if decoded.indices.size:
            assert decoded.indices[0] >= 0
            assert decoded.indices[-1] < count
    else:
        assert decoded.values.size == count


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=200), count=st.integers(-2, 400))
def test_random_bytes_decode_or_raise_invalid_update(
    spec: str, payload: bytes, count: int
) -> None:
    codec = make_codec(parse_codec(spec))
    try:
        decoded = codec.decode(payload, count)
    except InvalidUpdateError:
        return
    _assert_valid(decoded, count)


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_valid_payloads_decode_or_raise_invalid_update(
    spec: str, data: st.DataObject
) -> None:
    codec = make_codec(parse_codec(spec), rng=np.random.default_rng(0))
    count = data.draw(st.integers(1, 300))
    block = np.random.default_rng(count).standard_normal(count).astype(np.float32)
    payload = bytearray(codec.encode(block).payload)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(payload) - 1))
        payload[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, 2))  # sometimes truncate, sometimes extend
    mutated = (
        bytes(payload[: len(payload) - cut]) if cut < 2 else bytes(payload) + b"\0"
    )
    try:
        decoded = codec.decode(mutated, count)
    except InvalidUpdateError:
        return
    _assert_valid(decoded, count)
