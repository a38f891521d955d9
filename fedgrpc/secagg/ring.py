"""The ring Z_2^m that masked values live in, and the lift of signed codes into it.

On the data path this sits between quantisation (`compress`, or
`fixed_point` here) and masking: a client lifts its b-bit signed codes into
the ring, adds masks there, and the coordinator sums masked vectors there;
only the final sum is lowered back to signed integers.

Why Z_2^m with m = b + ceil(log2 n): codes lie in [-(2^(b-1) - 1), 2^(b-1) - 1]
(the symmetric ranges of `compress.quantize`), so a sum of n of them has
|sum| <= n (2^(b-1) - 1) < 2^(b-1) 2^ceil(log2 n) = 2^(m-1). Every possible sum
therefore has a unique representative in [-2^(m-1), 2^(m-1)), and lowering
(two's complement in m bits) recovers it exactly. Masks are uniform over the
whole ring, so the masked value hides the input perfectly (a one-time pad mod
2^m), and power-of-two moduli make the arithmetic plain wrapping unsigned
integer adds followed by an AND (no division, no big integers).

Storage: the smallest numpy unsigned dtype with >= m bits (uint16, uint32 or
uint64). numpy wraps unsigned array arithmetic modulo the dtype width without
warnings; since 2^m divides 2^width, masking with 2^m - 1 afterwards gives the
result mod 2^m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedgrpc.errors import InvalidUpdateError, check_config

RingArray = np.ndarray
"""A 1-D array of `Ring.dtype` whose entries are < 2^m."""
MAX_RING_BITS = 64
"""The widest ring: one uint64 per value."""


def ring_bits(value_bits: int, n_terms: int) -> int:
    """M = b + ceil(log2 n): the ring width in which n b-bit codes sum exactly.

    Raises:
        ConfigError: b < 2, n < 1, or m > 64.
    """
    check_config(value_bits >= 2, "value_bits", value_bits, ">= 2")
    check_config(n_terms >= 1, "n_terms", n_terms, ">= 1")
    bits = value_bits + math.ceil(math.log2(n_terms))
    check_config(bits <= MAX_RING_BITS, "ring bits", bits, f"<= {MAX_RING_BITS}")
    return bits


@dataclass(frozen=True, slots=True)
class Ring:
    """Z_2^bits with vectorised add/sub, lift from and lower to signed ints.

    Immutable and stateless: safe to share between threads. In-place methods
    (`add_into`, `sub_into`) modify only the array passed in.
    """

    bits: int
    """m: values are taken modulo 2^m."""

    def __post_init__(self) -> None:
        check_config(1 <= self.bits <= MAX_RING_BITS, "bits", self.bits, "1..64")

    @classmethod
    def for_sum(cls, value_bits: int, n_terms: int) -> Ring:
        """The ring in which `n_terms` codes of `value_bits` bits sum exactly."""
        return cls(ring_bits(value_bits, n_terms))

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger]:
        """uint16, uint32 or uint64: the narrowest standard width >= m."""
        for candidate in (np.uint16, np.uint32, np.uint64):
            dtype: np.dtype[np.unsignedinteger] = np.dtype(candidate)
            if self.bits <= 8 * dtype.itemsize:
                return dtype
        raise AssertionError("unreachable: bits <= 64 is checked at construction")

    @property
    def mask(self) -> int:
        """2^m - 1: AND with it reduces a dtype-width result modulo 2^m."""
        return (1 << self.bits) - 1

    @property
    def max_code(self) -> int:
        """Largest |value| that `lift` accepts and `lower` returns: 2^(m-1) - 1."""
        return (1 << (self.bits - 1)) - 1

    def zeros(self, count: int) -> RingArray:
        """A fresh all-zero ring vector of `count` elements."""
        return np.zeros(count, dtype=self.dtype)

    def lift(self, codes: np.ndarray, value_bits: int | None = None) -> RingArray:
        """Signed integers -> their residues mod 2^m (two's complement in m bits).

        `value_bits` (b) narrows the accepted range to the b-bit codes the
        ring was sized for: a client must never send more, or n of them could
        overflow the ring and the sum would come out wrong without a trace.

        Raises:
            InvalidUpdateError: not an integer array, or a value outside
                [-(2^(b-1) - 1), 2^(b-1) - 1] (b = m if `value_bits` is None).
        """
        if codes.dtype.kind not in "iu":
            raise InvalidUpdateError(
                f"ring lift expects integer codes, got dtype {codes.dtype}"
            )
        bound = self.max_code if value_bits is None else (1 << (value_bits - 1)) - 1
        if codes.size and (int(codes.min()) < -bound or int(codes.max()) > bound):
            raise InvalidUpdateError(
                f"codes span [{int(codes.min())}, {int(codes.max())}] but this "
                f"round sums codes in [-{bound}, {bound}]"
            )
        # One cast, no int64 temporaries: a C cast of a signed integer to an
        # unsigned dtype of w bits wraps it to x mod 2^w (two's complement),
        # and 2^m divides 2^w, so an AND then gives x mod 2^m.
        lifted = codes.astype(self.dtype)
        self.reduce_into(lifted)
        return lifted

    def lower(self, values: RingArray) -> np.ndarray:
        """Ring elements -> signed int64 in [-2^(m-1), 2^(m-1)) (the exact sum)."""
        self.check(values)
        if self.bits == MAX_RING_BITS:
            return values.view(np.int64).copy()
        signed = values.astype(np.int64)
        signed[signed > self.max_code] -= np.int64(1 << self.bits)
        return signed

    def add_into(self, acc: RingArray, other: RingArray) -> None:
        """Acc <- acc + other (mod 2^m), in place; both of `dtype`, same shape."""
        np.add(acc, other, out=acc)
        self.reduce_into(acc)

    def sub_into(self, acc: RingArray, other: RingArray) -> None:
        """Acc <- acc - other (mod 2^m), in place; unsigned wrap then AND."""
        np.subtract(acc, other, out=acc)
        self.reduce_into(acc)

    def check(self, values: RingArray) -> None:
        """Validate a ring vector received from elsewhere (the wire, a peer).

        Raises:
            InvalidUpdateError: wrong dtype, not 1-D, or bits set above m.
        """
        if values.dtype != self.dtype or values.ndim != 1:
            raise InvalidUpdateError(
                f"ring vector has dtype {values.dtype} and {values.ndim} dims, "
                f"expected 1-D {self.dtype} for a {self.bits}-bit ring"
            )
        narrow = self.bits < 8 * self.dtype.itemsize
        if narrow and values.size and int(values.max()) > self.mask:
            raise InvalidUpdateError(
                f"ring value {int(values.max())} is not below 2^{self.bits}"
            )

    def reduce_into(self, values: RingArray) -> None:
        """Values <- values mod 2^m, in place.

        Sums kept in the storage dtype wrap mod 2^w; since 2^m divides 2^w,
        one AND after any number of wrapping adds gives the sum mod 2^m, so
        masking (many seeds) reduces once, not once per seed.
        """
        if self.bits < 8 * self.dtype.itemsize:  # full-width rings wrap by themselves
            np.bitwise_and(values, self.dtype.type(self.mask), out=values)
