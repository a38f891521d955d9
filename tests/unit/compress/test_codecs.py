"""Dense and top-k block codecs: sent == decoded, exact top-k, sizes, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedgrpc.compress import (
    BlockCodec,
    DecodedBlock,
    Dense,
    DenseValues,
    SparseValues,
    TopK,
    make_codec,
    parse_codec,
)
from fedgrpc.compress.topk import TOPK_GROUP
from fedgrpc.errors import InvalidUpdateError

SPECS = [
    "dense:fp32",
    "dense:bf16",
    "dense:fp16",
    "dense:int8",
    "dense:int4",
    "dense:int2",
    "topk:0.01:int8",
    "topk:0.1:int4",
    "topk:0.025:int2",
    "topk:0.3:bf16",
    "topk:1:fp32",
]
BLOCKS = hnp.arrays(
    np.float32,
    st.integers(0, 3000),
    elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=False),
)


def _codec(spec: str, seed: int = 0) -> BlockCodec:
    return make_codec(parse_codec(spec), rng=np.random.default_rng(seed))


def _dense(decoded: DecodedBlock, count: int) -> np.ndarray:
    out = np.zeros(count, dtype=np.float32)
    decoded.add_into(out)
    return out


def _heavy_tailed(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.standard_normal(n // 512 + 1)).repeat(512)[:n]
    return (rng.standard_normal(n) * scales).astype(np.float32)


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=40, deadline=None)
@given(block=BLOCKS)
def test_sent_is_exactly_what_decode_returns(spec: str, block: np.ndarray) -> None:
    codec = _codec(spec)
    encoded = codec.encode(block)

    decoded = codec.decode(memoryview(bytearray(encoded.payload)), block.size)

    assert type(decoded) is type(encoded.sent)
    np.testing.assert_array_equal(decoded.values, encoded.sent.values)
    assert decoded.values.dtype == np.float32
    if isinstance(decoded, SparseValues):
        assert isinstance(encoded.sent, SparseValues)
        np.testing.assert_array_equal(decoded.indices, encoded.sent.indices)
        assert decoded.indices.dtype == np.int64
        assert np.all(np.diff(decoded.indices) > 0)
    else:
        assert decoded.values.size == block.size


@pytest.mark.parametrize("density", [0.001, 0.01, 0.1, 0.5])
@pytest.mark.parametrize("n", [65536, 40_000, 5000, 4096, 1])
def test_topk_sends_exactly_the_k_largest_of_each_group(density: float, n: int) -> None:
    block = _heavy_tailed(n, seed=n)
    codec = _codec(f"topk:{density}:fp32")

    sent = codec.decode(codec.encode(block).payload, n)

    assert isinstance(sent, SparseValues)
    np.testing.assert_array_equal(sent.values, block[sent.indices])  # fp32: exact
    groups = sent.indices // TOPK_GROUP
    for group in range(math.ceil(n / TOPK_GROUP)):
        values = block[group * TOPK_GROUP : (group + 1) * TOPK_GROUP]
        k = math.ceil(density * values.size)
        chosen = sent.values[groups == group]
        assert chosen.size == k
        np.testing.assert_array_equal(
            np.sort(np.abs(chosen)), np.sort(np.abs(values))[-k:]
        )
    assert sent.indices.size == codec.k_for(n)  # type: ignore[attr-defined]


def test_one_hot_group_cannot_take_every_slot() -> None:
    # Whole-block top-k would spend all 656 slots on group 0's huge values;
    # per-group selection gives each of the 16 groups its ceil(0.01 * 4096).
    block = np.ones(65536, dtype=np.float32)
    block[:TOPK_GROUP] = 1000.0
    block[5 * TOPK_GROUP + 7] = 0.0

    sent = _codec("topk:0.01:fp32").encode(block).sent

    assert isinstance(sent, SparseValues)
    per_group = np.bincount(sent.indices // TOPK_GROUP, minlength=16)
    np.testing.assert_array_equal(per_group, np.full(16, 41))
    assert 5 * TOPK_GROUP + 7 not in sent.indices


def test_zeros_are_never_sent() -> None:
    block = np.zeros(3 * TOPK_GROUP + 100, dtype=np.float32)
    block[[3, 5000, 12_300]] = [1.0, -2.0, 3.0]

    sent = _codec("topk:0.1:fp32").encode(block).sent

    assert isinstance(sent, SparseValues)
    np.testing.assert_array_equal(sent.indices, [3, 5000, 12_300])


@pytest.mark.parametrize("spec", SPECS)
def test_zero_blocks_round_trip(spec: str) -> None:
    codec = _codec(spec)
    block = np.zeros(70_000, dtype=np.float32)

    encoded = codec.encode(block)

    np.testing.assert_array_equal(_dense(encoded.sent, block.size), block)
    if spec.startswith("topk"):
        assert len(encoded.payload) <= 9  # k = 0, a scale at most, index header


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("chunk_bytes", [1024, 5000, 1 << 20])
def test_block_payload_never_exceeds_chunk_bytes(spec: str, chunk_bytes: int) -> None:
    codec = _codec(spec)
    count = codec.block_coordinates(chunk_bytes)
    # Uniform noise spreads the top-k positions: the widest index coding.
    block = np.random.default_rng(1).uniform(-1, 1, count).astype(np.float32)

    payload = codec.encode(block).payload

    assert len(payload) <= chunk_bytes
    if spec.startswith("dense"):
        # fp fills the chunk; int8/int4 to within one 4,096-value scale group
        assert len(payload) > chunk_bytes - 4100
        assert codec.estimated_bytes(count) == len(payload)
    else:
        assert count <= 65536
        assert count & (count - 1) == 0  # a power of two


@pytest.mark.parametrize(
    "spec", ["topk:0.01:int8", "topk:0.1:int4", "topk:0.025:int2", "topk:0.01:fp32"]
)
def test_topk_estimate_is_close_to_actual(spec: str) -> None:
    codec = _codec(spec)
    block = np.random.default_rng(2).standard_normal(65536).astype(np.float32)

    actual = len(codec.encode(block).payload)

    assert abs(codec.estimated_bytes(65536) - actual) <= 0.2 * actual


@pytest.mark.parametrize("spec", SPECS)
def test_encoding_is_deterministic_given_the_seed(spec: str) -> None:
    block = _heavy_tailed(10_000)

    first, again = (_codec(spec, seed=5).encode(block).payload for _ in "ab")

    assert first == again


def test_encode_rejects_bad_blocks() -> None:
    codec = make_codec(TopK(density=0.1))
    with pytest.raises(ValueError, match="1-D float32"):
        codec.encode(np.zeros(10, dtype=np.float64))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-D float32"):
        codec.encode(np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(InvalidUpdateError, match="NaN or Inf"):
        codec.encode(np.array([1, np.nan], dtype=np.float32))
    with pytest.raises(InvalidUpdateError, match="NaN or Inf"):
        make_codec(Dense()).encode(np.array([np.inf], dtype=np.float32))


def test_add_into_applies_the_weight() -> None:
    target = np.ones(5, dtype=np.float32)
    DenseValues(np.arange(5, dtype=np.float32)).add_into(target, 2.0)
    SparseValues(np.array([1, 4]), np.array([1, 1], np.float32)).add_into(target, -1)

    np.testing.assert_array_equal(target, [1, 2, 5, 7, 8])
