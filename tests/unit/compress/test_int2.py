"""int2 values: pinned layout, statistical scale, unbiased rounding, top-k use."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedgrpc.compress import TopK, make_codec, parse_codec
from fedgrpc.compress.int2 import INT2_GROUP
from fedgrpc.compress.quantize import decode_values, encode_values, value_bytes
from fedgrpc.wire.codec_params import codec_params_from_proto, codec_params_to_proto


def _round_trip(x: np.ndarray, seed: int = 0) -> np.ndarray:
    data = encode_values(x, "int2", np.random.default_rng(seed))
    assert len(data) == value_bytes("int2", x.size)
    return decode_values(memoryview(data), "int2", x.size)


def _scale(x: np.ndarray) -> float:
    """The documented scale of one group: RMS / 2."""
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)) / 2)


def test_known_vector_has_the_pinned_layout_and_decodes_exactly() -> None:
    # Mean square (3 * 9 + 5 * 1) / 8 = 4: RMS 2, scale 1, every value on a
    # level (-3, -1, 1, 3), so rounding is deterministic: q = (x + 3) / 2.
    x = np.array([3, -3, 3, 1, -1, 1, -1, 1], dtype=np.float32)
    data = encode_values(x, "int2", np.random.default_rng(0))

    # codes 3 0 3 2 | 1 2 1 2, element 4i + j in bits 2j of byte i
    assert data == np.float32(1.0).tobytes() + bytes([0b10_11_00_11, 0b10_01_10_01])
    np.testing.assert_array_equal(_round_trip(x), x)
    assert value_bytes("int2", 8) == 4 + 2
    assert value_bytes("int2", 129) == 2 * 4 + 33  # two groups, 33 bytes of codes


def test_stochastic_rounding_is_unbiased_inside_the_levels() -> None:
    x = np.linspace(-1, 1, INT2_GROUP, dtype=np.float32)
    s = _scale(x)  # ~0.29: values beyond 3s ~ 0.87 are clipped
    draws = np.stack([_round_trip(x, seed) for seed in range(3000)])
    inside = np.abs(x) <= 3 * s

    # Levels are 2s apart: rounding error variance <= s**2, so the mean of
    # 3000 draws has std <= s / 54.7; allow 5 sigma.
    mean = draws.mean(axis=0)
    assert np.all(np.abs(mean[inside] - x[inside]) <= 5 * s / 54.7)
    # Beyond 3s the value is clipped to the top level (EF keeps the rest).
    top = np.broadcast_to(np.sign(x[~inside]) * 3 * s, draws[:, ~inside].shape)
    np.testing.assert_allclose(draws[:, ~inside], top, rtol=1e-6)


@settings(max_examples=200)
@given(
    x=hnp.arrays(
        np.float32,
        st.integers(1, 300),
        elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=False),
    ),
    seed=st.integers(0, 2**32),
)
def test_every_value_is_a_level_next_to_its_clipped_input(
    x: np.ndarray, seed: int
) -> None:
    y = _round_trip(x, seed).astype(np.float64)
    for start in range(0, x.size, INT2_GROUP):  # per group of 128
        xs = x[start : start + INT2_GROUP].astype(np.float64)
        ys = y[start : start + INT2_GROUP]
        s = np.float32(_scale(xs))
        if s < np.finfo(np.float32).tiny:
            assert np.all(ys == 0)
            continue
        levels = ys / s
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
        assert set(np.round(levels).astype(int)) <= {-3, -1, 1, 3}
        clipped = np.clip(xs, -3 * s, 3 * s)
        assert np.all(np.abs(ys - clipped) <= 2 * s * (1 + 1e-5))


def test_each_group_of_128_values_has_its_own_scale() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(3 * INT2_GROUP + 5).astype(np.float32)
    x[INT2_GROUP : 2 * INT2_GROUP] *= 1e-6  # a quiet group between loud ones

    y = _round_trip(x)

    quiet = slice(INT2_GROUP, 2 * INT2_GROUP)
    bound = 3 * _scale(x[quiet]) * (1 + 1e-5)
    assert np.abs(y[quiet]).max() <= bound < 1e-5


def test_topk_int2_sends_every_sign_exactly_and_about_2_25_bits_a_value() -> None:
    """At 2.5 % every selected value is above s, so only magnitudes are rounded."""
    block = np.random.default_rng(4).standard_normal(65536).astype(np.float32)
    codec = make_codec(TopK(density=0.025, bits=2), rng=np.random.default_rng(0))

    encoded = codec.encode(block)
    sent = encoded.sent

    assert np.array_equal(np.sign(sent.values), np.sign(block[sent.indices]))  # type: ignore[union-attr]
    k = sent.values.size
    assert k == 16 * 103  # ceil(0.025 * 4096) per group of 4096
    value_section = value_bytes("int2", k)
    assert value_section * 8 / k <= 2.3
    # Values plus coded indices: > 120x fewer bytes than float32.
    assert 65536 * 4 / len(encoded.payload) > 120


@pytest.mark.parametrize("spec", ["topk:0.025:int2", "dense:int2"])
def test_int2_travels_in_codec_params(spec: str) -> None:
    config = parse_codec(spec)

    message = codec_params_to_proto(config, 1 << 20, 0.98)

    assert message.values == 6  # VALUE_FORMAT_INT2
    assert codec_params_from_proto(message) == config
