"""Value formats: a float32 vector to bytes and back, fp32/bf16/fp16/int8/int4/int2.

Used by both codecs for their value section (every value of a dense block,
the k selected values of a top-k block). Layouts, all little-endian:

    fp32   4n bytes        IEEE float32
    bf16   2n bytes        upper half of float32, round to nearest even
    fp16   2n bytes        IEEE float16, round to nearest even, clipped to ±65504
    int8   4g + n          g = ceil(n / 4096) float32 scales, then int8 codes
                           in [-127, 127]
    int4   4g + ceil(n/2)  g float32 scales, then codes in [-7, 7], two per
                           byte: element 2i in the low nibble, 2i+1 in the high
    int2   4g' + ceil(n/4) g' = ceil(n / 128) scales, four 2-bit codes per byte:
                           its own statistical scale and levels (`int2`)

Integer formats decode as code * scale, one scale per group of 4,096 values
(`SCALE_GROUP`), scale = max|x| / qmax over the group: the group's largest
value is exact and every element is off by less than its group's scale.
Groups, not one scale per ~1M-value dense block, because a block spans
tensors whose magnitudes differ by orders of magnitude: on the bench's
heavy-tailed data one scale per block left ||error|| at 1.6x ||x|| for int4
and 0.14x for int8. The scales cost 0.1 % (int8) / 0.2 % (int4) of bytes.
Rounding is *stochastic* (up with probability equal to the fraction), which
makes the code an unbiased estimate of x / scale: the DGC/QSGD argument for
why quantisation noise averages out over clients and rounds instead of
drifting. The symmetric range (-128 and -8 unused) keeps that unbiasedness
at both ends; decoders reject the unused codes.

Floats are clipped to the target format's finite range instead of becoming
Inf; what the clip removes stays in the client's error-feedback residual.
"""

from __future__ import annotations

import numpy as np

from fedgrpc.compress.blocks import F32Array, check_finite
from fedgrpc.compress.int2 import decode_int2, encode_int2, int2_bytes
from fedgrpc.domain.codecs import ValueFormat
from fedgrpc.errors import InvalidUpdateError

SCALE_BYTES = 4
SCALE_GROUP = 4096
"""Values per int8/int4 scale (see the module docstring for why)."""
QMAX: dict[str, int] = {"int8": 127, "int4": 7}
"""Largest integer code per format; the ranges are symmetric (see module doc)."""
_BF16_MAX = np.float32(3.3895314e38)  # 0x7F7F0000: rounds to itself, never to Inf
_FP16_MAX = np.float32(65504.0)
_F32_MAX = float(np.finfo(np.float32).max)
_TINY = float(np.finfo(np.float32).tiny)
"""A scale below the smallest normal float32 would overflow x / scale; such a
group (max|x| < ~1.5e-36) is sent as zeros and error feedback keeps it."""


def value_bytes(fmt: ValueFormat, n: int) -> int:
    """Bytes of the value section for `n` values in `fmt` (scale included)."""
    if fmt == "fp32":
        return 4 * n
    if fmt in ("bf16", "fp16"):
        return 2 * n
    if fmt == "int2":
        return int2_bytes(n)
    scales = SCALE_BYTES * scale_count(n)
    if fmt == "int8":
        return scales + n
    return scales + (n + 1) // 2


def scale_count(n: int) -> int:
    """Scales an int8/int4 section of `n` values carries: one per started group."""
    return -(-n // SCALE_GROUP)


def encode_values(x: F32Array, fmt: ValueFormat, rng: np.random.Generator) -> bytes:
    """Write `x` (1-D float32) in `fmt`; `rng` drives stochastic rounding.

    Raises:
        InvalidUpdateError: `x` holds NaN or Inf (the client must not send those).
    """
    if fmt == "int2":
        return encode_int2(x, rng)
    if fmt in QMAX:
        scales, codes = _stochastic_codes(x, QMAX[fmt], rng)
        body = codes if fmt == "int8" else _pack_int4(codes)
        return scales.astype("<f4", copy=False).tobytes() + body.tobytes()
    check_finite(x, "block values")
    if fmt == "fp32":
        return x.astype("<f4", copy=False).tobytes()
    if fmt == "fp16":
        return np.clip(x, -_FP16_MAX, _FP16_MAX).astype("<f2").tobytes()
    return _to_bf16(x).tobytes()


def decode_values(data: memoryview, fmt: ValueFormat, n: int) -> F32Array:
    """Read `n` values in `fmt` from exactly `value_bytes(fmt, n)` bytes.

    Raises:
        InvalidUpdateError: wrong length, a bad scale, an unused integer code,
            or a NaN/Inf after decoding.
    """
    expected = value_bytes(fmt, n)
    if len(data) != expected:
        raise InvalidUpdateError(
            f"value section has {len(data)} bytes, expected {expected} for "
            f"{n} {fmt} values"
        )
    if fmt == "int2":
        return decode_int2(data, n)
    if fmt in QMAX:
        return _decode_scaled(data, fmt, n)
    if fmt == "fp32":
        values = np.frombuffer(data, dtype="<f4")
    elif fmt == "fp16":
        values = np.frombuffer(data, dtype="<f2").astype(np.float32)
    else:
        bits = np.frombuffer(data, dtype="<u2").astype(np.uint32)
        bits <<= np.uint32(16)
        values = bits.view(np.float32)
    check_finite(values, f"decoded {fmt} values")
    return values


def _to_bf16(x: F32Array) -> np.ndarray:
    """float32 → bf16 bit patterns (uint16), round to nearest, ties to even."""
    bits = np.clip(x, -_BF16_MAX, _BF16_MAX).view(np.uint32)  # a fresh copy
    # Adding 0x7FFF plus the lowest kept bit carries into the kept half exactly
    # when the dropped half is above one half ulp, or equal to it and odd.
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    lsb += np.uint32(0x7FFF)
    bits += lsb
    bits >>= np.uint32(16)
    return bits.astype("<u2")


def _grouped(x: F32Array) -> F32Array:
    """`x` as (groups, SCALE_GROUP); zero-padded, so copied, only if it must be."""
    groups = scale_count(x.size)
    if x.size == groups * SCALE_GROUP:
        return x.reshape(groups, SCALE_GROUP)
    padded = np.zeros(groups * SCALE_GROUP, dtype=np.float32)
    padded[: x.size] = x
    return padded.reshape(groups, SCALE_GROUP)


def _stochastic_codes(
    x: F32Array, qmax: int, rng: np.random.Generator
) -> tuple[F32Array, np.ndarray]:
    """(scale per group, int8 codes) with codes * scale ≈ x, rounded stochastically."""
    grouped = _grouped(x)  # (groups, SCALE_GROUP)
    peak = np.maximum(grouped.max(axis=1), -grouped.min(axis=1))  # NaN propagates
    if not np.isfinite(peak).all():
        raise InvalidUpdateError("block values contain NaN or Inf: expected finite")
    scales = (peak.astype(np.float64) / qmax).astype(np.float32)
    over = scales.astype(np.float64) * qmax > _F32_MAX  # rounded up past the max
    scales[over] = np.nextafter(scales[over], np.float32(0))
    scales[scales < _TINY] = 0  # too small to divide by: the group is sent as 0
    y = grouped / np.where(scales > 0, scales, np.float32(1))[:, None]
    y[scales == 0] = 0
    # floor(y + u), u ~ U[0, 1): rounds up with probability frac(y), so E = y.
    y += rng.random(y.shape, dtype=np.float32)
    np.floor(y, out=y)
    np.clip(y, -qmax, qmax, out=y)
    return scales, y.reshape(-1)[: x.size].astype(np.int8)


def _decode_scaled(data: memoryview, fmt: ValueFormat, n: int) -> F32Array:
    qmax, groups = QMAX[fmt], scale_count(n)
    scales = np.frombuffer(data[: SCALE_BYTES * groups], dtype="<f4")
    # qmax * scale finite ⇒ every code * scale is finite: no pass over values.
    # Checked in float64, where the product cannot overflow; NaN fails too.
    # A signalling NaN from the wire would raise "invalid value" on the cast.
    with np.errstate(invalid="ignore"):
        wide = scales.astype(np.float64) * qmax
        valid = (wide >= 0) & (wide <= _F32_MAX)
    if not valid.all():
        raise InvalidUpdateError(
            f"{fmt} scale {float(scales[~valid][0])!r} is invalid: expected finite, "
            f">= 0 and at most {_F32_MAX / qmax:.4g}"
        )
    body = data[SCALE_BYTES * groups :]
    codes = np.frombuffer(body, np.int8) if fmt == "int8" else _unpack_int4(body, n)
    if n and codes.min() < -qmax:
        raise InvalidUpdateError(
            f"{fmt} code {int(codes.min())} is unused: expected codes in "
            f"[-{qmax}, {qmax}]"
        )
    values: F32Array = codes.astype(np.float32)
    full = n // SCALE_GROUP * SCALE_GROUP  # whole groups, then a partial one
    head = values[:full].reshape(-1, SCALE_GROUP)
    np.multiply(head, scales[: full // SCALE_GROUP, None], out=head)
    values[full:] *= scales[-1] if n > full else np.float32(1)
    return values


def _pack_int4(codes: np.ndarray) -> np.ndarray:
    """int8 codes in [-8, 7] → bytes, two's-complement nibbles, low nibble first."""
    nibbles = np.zeros(codes.size + codes.size % 2, dtype=np.uint8)  # even length
    np.bitwise_and(codes.view(np.uint8), np.uint8(0x0F), out=nibbles[: codes.size])
    packed: np.ndarray = nibbles[1::2] << np.uint8(4)
    packed |= nibbles[0::2]
    return packed


def _unpack_int4(body: memoryview, n: int) -> np.ndarray:
    """Inverse of `_pack_int4`; the padding nibble of an odd `n` must be 0."""
    packed = np.frombuffer(body, dtype=np.uint8)
    nibbles = np.empty(2 * packed.size, dtype=np.uint8)
    np.bitwise_and(packed, np.uint8(0x0F), out=nibbles[0::2])
    np.right_shift(packed, np.uint8(4), out=nibbles[1::2])
    if n % 2 and nibbles[n] != 0:
        raise InvalidUpdateError("int4 padding nibble is not 0: payload is corrupt")
    # Sign-extend 4-bit two's complement: 0..7 stay, 8..15 become -8..-1.
    nibbles ^= np.uint8(8)
    codes = nibbles[:n].view(np.int8)
    codes -= np.int8(8)
    return codes
