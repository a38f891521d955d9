"""The ring Z_2^m: width rule, exact sums, lift/lower, validation; fixed point."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgrpc.errors import ConfigError, InvalidUpdateError
from fedgrpc.secagg import FixedPointScale, Ring, ring_bits


@pytest.mark.parametrize(
    ("value_bits", "n", "bits", "dtype"),
    [
        (8, 1, 8, np.uint16),
        (8, 2, 9, np.uint16),
        (8, 3, 10, np.uint16),
        (8, 32, 13, np.uint16),
        (8, 1000, 18, np.uint32),
        (4, 100_000, 21, np.uint32),
        (16, 1 << 20, 36, np.uint64),
    ],
)
def test_ring_width_is_b_plus_ceil_log2_n(value_bits, n, bits, dtype) -> None:
    ring = Ring.for_sum(value_bits, n)

    assert ring_bits(value_bits, n) == bits == value_bits + math.ceil(math.log2(n))
    assert ring.dtype == np.dtype(dtype)


@pytest.mark.parametrize(("value_bits", "n"), [(8, 3), (8, 32), (4, 5), (8, 1000)])
def test_extreme_sums_of_n_codes_lower_exactly(value_bits: int, n: int) -> None:
    # The worst cases: every client at +qmax, or every client at -qmax.
    ring, qmax = Ring.for_sum(value_bits, n), (1 << (value_bits - 1)) - 1
    codes = np.array([qmax, -qmax, qmax - 1, 0], dtype=np.int64)
    acc = ring.zeros(codes.size)

    for _ in range(n):
        ring.add_into(acc, ring.lift(codes))

    assert ring.lower(acc).tolist() == (n * codes).tolist()


@settings(max_examples=60)
@given(
    bits=st.integers(2, 64),
    data=st.data(),
)
def test_lift_then_lower_is_identity(bits: int, data: st.DataObject) -> None:
    ring = Ring(bits)
    values = data.draw(
        st.lists(st.integers(-ring.max_code, ring.max_code), min_size=0, max_size=50)
    )
    codes = np.array(values, dtype=np.int64)

    lifted = ring.lift(codes)

    assert lifted.dtype == ring.dtype
    assert ring.lower(lifted).tolist() == values


@settings(max_examples=40)
@given(
    bits=st.sampled_from([9, 13, 16, 17, 31, 32, 33, 63, 64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_add_and_sub_agree_with_python_integers_mod_2_to_m(bits, seed) -> None:
    ring, rng = Ring(bits), np.random.default_rng(seed)
    a = (rng.integers(0, 2**63, 20, dtype=np.uint64) & np.uint64(ring.mask)).astype(
        ring.dtype
    )
    b = (rng.integers(0, 2**63, 20, dtype=np.uint64) & np.uint64(ring.mask)).astype(
        ring.dtype
    )
    total, diff = a.copy(), a.copy()

    ring.add_into(total, b)
    ring.sub_into(diff, b)

    modulus = 1 << bits
    assert [int(v) for v in total] == [
        (int(x) + int(y)) % modulus for x, y in zip(a, b, strict=True)
    ]
    assert [int(v) for v in diff] == [
        (int(x) - int(y)) % modulus for x, y in zip(a, b, strict=True)
    ]


def test_lift_rejects_codes_outside_the_ring_and_floats() -> None:
    ring = Ring(9)

    with pytest.raises(InvalidUpdateError, match=r"\[-255, 255\]"):
        ring.lift(np.array([256]))
    with pytest.raises(InvalidUpdateError, match="integer"):
        ring.lift(np.array([1.0]))


def test_check_rejects_bits_above_m_and_wrong_dtype() -> None:
    ring = Ring(13)

    with pytest.raises(InvalidUpdateError, match="not below 2"):
        ring.check(np.array([1 << 13], dtype=np.uint16))
    with pytest.raises(InvalidUpdateError, match="uint16"):
        ring.check(np.array([1], dtype=np.uint32))


def test_ring_wider_than_64_bits_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ring bits"):
        ring_bits(60, 1 << 10)


def test_fixed_point_rounds_stochastically_and_without_bias() -> None:
    scale = FixedPointScale(clip=1.0, value_bits=8)
    x = np.full(200_000, 0.3 * scale.scale, dtype=np.float32)  # 0.3 of a step

    quantised = scale.quantise(x, np.random.default_rng(0))

    assert set(np.unique(quantised.codes).tolist()) == {0, 1}
    assert quantised.codes.mean() == pytest.approx(0.3, abs=0.005)
    assert quantised.clipped == 0


def test_fixed_point_clips_to_the_announced_range_and_counts_it() -> None:
    scale = FixedPointScale(clip=0.5, value_bits=4)
    x = np.array([-2.0, -0.5, 0.0, 0.5, 0.75, 10.0], dtype=np.float32)

    quantised = scale.quantise(x, np.random.default_rng(1))

    assert quantised.clipped == 3
    assert quantised.codes.dtype == np.int8
    assert quantised.codes.tolist() == [-7, -7, 0, 7, 7, 7]
    assert scale.dequantise(quantised.codes).tolist() == pytest.approx(
        [-0.5, -0.5, 0.0, 0.5, 0.5, 0.5]
    )


def test_fixed_point_sum_of_codes_dequantises_to_the_sum_of_values() -> None:
    # One round-wide scale is what makes the masked *sum* decodable.
    scale, rng = FixedPointScale(clip=4.0, value_bits=12), np.random.default_rng(2)
    xs = [rng.uniform(-4, 4, 1000).astype(np.float32) for _ in range(8)]

    total = sum(scale.quantise(x, rng).codes.astype(np.int64) for x in xs)

    error = scale.dequantise(np.asarray(total)) - np.sum(xs, axis=0)
    assert np.abs(error).max() <= 8 * scale.scale


def test_fixed_point_rejects_nan_and_bad_config() -> None:
    with pytest.raises(InvalidUpdateError, match="NaN"):
        FixedPointScale(clip=1.0).quantise(
            np.array([np.nan], dtype=np.float32), np.random.default_rng(0)
        )
    with pytest.raises(ConfigError, match="clip"):
        FixedPointScale(clip=0.0)
    with pytest.raises(ConfigError, match="value_bits"):
        FixedPointScale(clip=1.0, value_bits=30)
