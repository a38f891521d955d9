"""Value formats: exact layouts, error bounds, stochastic rounding, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedgrpc.compress.quantize import (
    QMAX,
    SCALE_GROUP,
    decode_values,
    encode_values,
    value_bytes,
)
from fedgrpc.domain.codecs import VALUE_FORMATS, ValueFormat
from fedgrpc.errors import InvalidUpdateError

FINITE = st.floats(
    width=32, allow_nan=False, allow_infinity=False, allow_subnormal=False
)
TINY = float(np.finfo(np.float32).tiny)


def _vectors(elements: st.SearchStrategy[float] = FINITE) -> st.SearchStrategy:
    return hnp.arrays(np.float32, st.integers(0, 300), elements=elements)


def _round_trip(x: np.ndarray, fmt: ValueFormat, seed: int = 0) -> np.ndarray:
    data = encode_values(x, fmt, np.random.default_rng(seed))
    assert len(data) == value_bytes(fmt, x.size)
    return decode_values(memoryview(data), fmt, x.size)


@given(_vectors())
def test_fp32_is_lossless(x: np.ndarray) -> None:
    np.testing.assert_array_equal(_round_trip(x, "fp32"), x)


@given(_vectors())
def test_bf16_error_is_at_most_half_an_ulp(x: np.ndarray) -> None:
    y = _round_trip(x, "bf16").astype(np.float64)
    # 8 significant bits: round to nearest is off by <= 2**-8 relative.
    assert np.all(np.abs(y - x) <= 2.0**-8 * np.abs(x.astype(np.float64)))


@given(_vectors(st.floats(-65504, 65504, width=32, allow_subnormal=False)))
def test_fp16_error_is_at_most_half_an_ulp_in_range(x: np.ndarray) -> None:
    y = _round_trip(x, "fp16").astype(np.float64)
    # 11 significant bits; below fp16's smallest normal the spacing is 2**-24.
    bound = 2.0**-11 * np.abs(x.astype(np.float64)) + 2.0**-25
    assert np.all(np.abs(y - x) <= bound)


def test_fp16_and_bf16_clip_to_finite_instead_of_inf() -> None:
    x = np.array([1e5, -1e9, 3.4e38], dtype=np.float32)

    np.testing.assert_array_equal(_round_trip(x, "fp16"), [65504, -65504, 65504])
    assert np.all(np.isfinite(_round_trip(x, "bf16")))


@pytest.mark.parametrize("fmt", ["int8", "int4"])
@settings(max_examples=200)
@given(x=_vectors(), seed=st.integers(0, 2**32))
def test_integer_formats_are_off_by_less_than_one_scale(
    fmt: ValueFormat, x: np.ndarray, seed: int
) -> None:
    y = _round_trip(x, fmt, seed).astype(np.float64)
    peak = float(np.abs(x.astype(np.float64)).max(initial=0.0))
    scale = peak / QMAX[fmt]
    error = np.abs(y - x)
    if scale < TINY:  # documented: such blocks are sent as zeros
        assert np.all(y == 0)
    else:
        assert np.all(error <= scale * (1 + 1e-6))
        assert float(np.abs(y).max()) <= peak * (1 + 1e-6)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_stochastic_rounding_is_unbiased(fmt: ValueFormat) -> None:
    x = np.linspace(-1, 1, 101, dtype=np.float32)  # scale = 1 / qmax
    draws = np.stack([_round_trip(x, fmt, seed) for seed in range(4000)])

    # Each element's rounding error has variance <= scale**2 / 4, so its
    # mean over 4000 seeds has std <= scale / 126: allow 5 sigma.
    scale = 1.0 / QMAX[fmt]
    assert np.all(np.abs(draws.mean(axis=0) - x) <= 5 * scale / 126)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_each_group_of_4096_values_has_its_own_scale(fmt: ValueFormat) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 3 * SCALE_GROUP + 5).astype(np.float32)
    x[SCALE_GROUP : 2 * SCALE_GROUP] *= 1e-6  # a quiet group between loud ones

    data = encode_values(x, fmt, rng)
    y = decode_values(memoryview(data), fmt, x.size)

    assert (
        len(data)
        == value_bytes(fmt, x.size)
        == 4 * 4 + (x.size if fmt == "int8" else (x.size + 1) // 2)
    )
    quiet = slice(SCALE_GROUP, 2 * SCALE_GROUP)
    assert np.abs(y[quiet] - x[quiet]).max() <= 1e-6 / QMAX[fmt] * (1 + 1e-6)


def test_int_encoding_is_deterministic_given_the_seed() -> None:
    x = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    first, again = (encode_values(x, "int8", np.random.default_rng(7)) for _ in "ab")
    other = encode_values(x, "int8", np.random.default_rng(8))

    assert first == again
    assert first != other


def test_int4_layout_is_low_nibble_first_with_a_zero_pad() -> None:
    x = np.array([7, -7, 0, 1, -3], dtype=np.float32)  # integers: no rounding
    data = encode_values(x, "int4", np.random.default_rng(0))
    # scale 1.0, then nibbles 7|(-7 = 0x9)<<4, 0|1<<4, (-3 = 0xD)|pad 0
    assert data == np.float32(1.0).tobytes() + bytes([0x97, 0x10, 0x0D])
    np.testing.assert_array_equal(_round_trip(x, "int4"), x)


@pytest.mark.parametrize("fmt", VALUE_FORMATS)
def test_zero_and_empty_blocks_decode_to_zeros(fmt: ValueFormat) -> None:
    for x in (np.zeros(33, np.float32), np.zeros(0, np.float32)):
        np.testing.assert_array_equal(_round_trip(x, fmt), x)


@pytest.mark.parametrize("fmt", VALUE_FORMATS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused(fmt: ValueFormat, bad: float) -> None:
    x = np.array([1.0, bad, 2.0], dtype=np.float32)
    with pytest.raises(InvalidUpdateError, match="NaN or Inf"):
        encode_values(x, fmt, np.random.default_rng(0))
