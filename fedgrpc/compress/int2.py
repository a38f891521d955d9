"""The int2 value format: 2-bit statistical quantisation with a per-group scale.

Why a separate format and not int4 with fewer levels: top-k values are the
tail of the update, all of one sign pattern and magnitude class, so a
zero level is wasted and a scale set by the group's *maximum* (as int8/int4
do) puts most values below the first level, where stochastic rounding
flips their sign half the time. SparseLoCo (arXiv 2508.15706) sends its
top-k values at 2 bits with a scale from the values' statistics; this is
that idea in the form the other formats already take. Layout:

    4g bytes        g = ceil(n / 128) float32 scales s, little-endian
    ceil(n/4)       codes q in 0..3, four per byte: element 4i + j in bits
                    2j, 2j + 1 of byte i (`bitpack`, least significant
                    first); padding bits of the last byte are zero

Decoded value = (2q - 3) s, one of -3s, -s, s, 3s: four levels, uniformly
spaced 2s apart and symmetric, with no zero. The scale is statistical:

    s = RMS(x_group) / 2 = sqrt(sum(x^2) / count) / 2

the step of the best uniform 4-level quantiser of a Gaussian (a step of
about sigma, levels at ±0.5 sigma and ±1.5 sigma; Max 1960, "Quantizing
for minimum distortion", uniform case). For the top 2.5 % of a roughly
Gaussian group every value lies above 2.2 sigma, so above s: its sign is
always exact and only the magnitude is rounded, between s and 3s.

Rounding: with y = clip(x / s, -3, 3) and t = (y + 3) / 2 in [0, 3],
q = floor(t + u), u ~ U[0, 1), rounds up with probability frac(t), so
E[2q - 3] = y: unbiased for |x| <= 3s. The part of a value beyond 3s is
clipped off; the client's error-feedback residual keeps it for a later
round (as for every format's clipping, see `quantize`).

Groups are 128 values, not int8's 4,096: one scale then costs 0.25 bit per
value (2.25 bits in all) and follows the update's scale from tensor to
tensor; at 2.5 % density one 4,096-value group would span 160 K
coordinates, more than a small model, under one scale.
"""

from __future__ import annotations

import numpy as np

from fedgrpc.compress.bitpack import pack_bits, packed_size, unpack_bits
from fedgrpc.compress.blocks import F32Array
from fedgrpc.errors import InvalidUpdateError

INT2_GROUP = 128
"""Values per int2 scale (module docstring: why smaller than int8's)."""
INT2_LEVEL = 3
"""Largest |code value| 2q - 3: a decoded value is at most 3 s in magnitude."""
_SCALE_BYTES = 4
_F32_MAX = float(np.finfo(np.float32).max)
_MAX_SCALE = np.nextafter(np.float32(_F32_MAX / INT2_LEVEL), np.float32(0))
"""Largest scale whose 3 s is still finite in float32."""
_TINY = float(np.finfo(np.float32).tiny)


def int2_groups(n: int) -> int:
    """Scales an int2 section of `n` values carries: one per started group."""
    return -(-n // INT2_GROUP)


def int2_bytes(n: int) -> int:
    """Bytes of an int2 section of `n` values (scales included)."""
    return _SCALE_BYTES * int2_groups(n) + packed_size(n, 2)


def encode_int2(x: F32Array, rng: np.random.Generator) -> bytes:
    """Scales then packed codes for `x` (1-D float32), rounded stochastically.

    Raises:
        InvalidUpdateError: `x` holds NaN or Inf.
    """
    groups = int2_groups(x.size)
    padded = np.zeros(groups * INT2_GROUP, dtype=np.float32)
    padded[: x.size] = x
    grouped = padded.reshape(groups, INT2_GROUP)
    # Sum of squares in float64: float32 squares overflow above ~1.8e19.
    sums = np.square(grouped, dtype=np.float64).sum(axis=1)
    if not np.isfinite(sums).all():
        raise InvalidUpdateError("block values contain NaN or Inf: expected finite")
    counts = np.full(groups, INT2_GROUP, dtype=np.float64)
    if groups and x.size % INT2_GROUP:
        counts[-1] = x.size % INT2_GROUP  # the zero padding is not data
    scales = np.minimum(np.sqrt(sums / np.maximum(counts, 1)) / 2, _MAX_SCALE)
    scales = scales.astype(np.float32)
    scales[scales < _TINY] = 0  # too small to divide by: decodes as 0
    y = grouped / np.where(scales > 0, scales, np.float32(1))[:, None]
    np.clip(y, -INT2_LEVEL, INT2_LEVEL, out=y)
    # t = (y + 3) / 2 in [0, 3]; q = floor(t + u) rounds up w.p. frac(t).
    y += INT2_LEVEL
    y *= np.float32(0.5)
    y += rng.random(y.shape, dtype=np.float32)
    np.floor(y, out=y)
    np.clip(y, 0, INT2_LEVEL, out=y)
    codes = y.reshape(-1)[: x.size].astype(np.uint8)
    head: bytes = scales.astype("<f4", copy=False).tobytes()
    return head + pack_bits(codes, 2)


def decode_int2(data: memoryview, n: int) -> F32Array:
    """`n` values from exactly `int2_bytes(n)` bytes (length checked by caller).

    Raises:
        InvalidUpdateError: a scale that is negative, NaN, Inf or so large
            that 3 s overflows; non-zero padding bits.
    """
    groups = int2_groups(n)
    scales = np.frombuffer(data[: _SCALE_BYTES * groups], dtype="<f4")
    with np.errstate(invalid="ignore"):  # NaN compares False: refused below
        valid = (scales >= 0) & (scales <= _MAX_SCALE)
    if not valid.all():
        raise InvalidUpdateError(
            f"int2 scale {float(scales[~valid][0])!r} is invalid: expected finite, "
            f">= 0 and at most {float(_MAX_SCALE):.4g}"
        )
    codes = unpack_bits(data[_SCALE_BYTES * groups :], n, 2, "int2 codes")
    levels = codes.astype(np.float32)
    levels *= 2
    levels -= INT2_LEVEL  # 2q - 3
    padded = np.zeros(groups * INT2_GROUP, dtype=np.float32)
    padded[:n] = levels
    grouped = padded.reshape(groups, INT2_GROUP)
    grouped *= scales[:, None]
    values: F32Array = padded[:n]
    return values
