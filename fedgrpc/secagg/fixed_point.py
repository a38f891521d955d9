"""Fixed-point quantisation with one round-wide scale, for values summed under masks.

`compress.quantize` gives every group of 4,096 values its own scale, chosen
by the client. Under secure aggregation that cannot work: the coordinator
only ever sees the *sum* of the clients' codes, and sum_i(code_i * scale_i)
cannot be recovered from sum_i(code_i) when the scales differ. So the
coordinator announces one clip value C per round (DESIGN.md step 3), every
client quantises with scale = C / qmax, and the sum of codes times that scale
is the sum of the (clipped, rounded) values.

Clipping is where the fixed scale costs accuracy: values beyond +-C are cut
to +-C. Each client counts what it clipped and reports the count, so the
coordinator can raise C next round; what was cut (and the rounding error)
stays in the client's error-feedback residual, as with the other codecs.

Rounding is stochastic (up with probability equal to the fraction), so each
code is an unbiased estimate of x / scale and the rounding noise of n clients
averages out instead of adding a bias (the QSGD argument).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedgrpc.errors import InvalidUpdateError, check_config

MIN_VALUE_BITS = 2
MAX_VALUE_BITS = 24
"""float32 has a 24-bit significand: finer codes would only quantise noise."""


@dataclass(frozen=True, slots=True)
class FixedPointCodes:
    """A client's quantised values and how many of them were clipped."""

    codes: np.ndarray
    """Signed codes in [-qmax, qmax], int8/int16/int32 as b needs, same length
    as the input."""
    clipped: int
    """Values whose magnitude exceeded the clip (before rounding)."""


@dataclass(frozen=True, slots=True)
class FixedPointScale:
    """The round-wide fixed-point format the coordinator announces.

    Immutable; `quantise` draws from the generator passed in and nothing else.
    """

    clip: float
    """C > 0: values are clipped to [-C, C], and code qmax means C."""
    value_bits: int = 8
    """b: codes use the symmetric range [-(2^(b-1) - 1), 2^(b-1) - 1] (8 like int8)."""

    def __post_init__(self) -> None:
        check_config(
            np.isfinite(self.clip) and self.clip > 0, "clip", self.clip, "finite > 0"
        )
        check_config(
            MIN_VALUE_BITS <= self.value_bits <= MAX_VALUE_BITS,
            "value_bits",
            self.value_bits,
            f"{MIN_VALUE_BITS}..{MAX_VALUE_BITS}",
        )

    @property
    def qmax(self) -> int:
        """Largest code: 2^(b-1) - 1 (symmetric, so rounding stays unbiased)."""
        return (1 << (self.value_bits - 1)) - 1

    @property
    def scale(self) -> float:
        """Value of one code step: clip / qmax."""
        return self.clip / self.qmax

    def quantise(self, x: np.ndarray, rng: np.random.Generator) -> FixedPointCodes:
        """Clip `x` (1-D float) to +-clip and round stochastically to codes.

        Raises:
            InvalidUpdateError: `x` holds NaN or Inf.
        """
        # float64: x / scale stays exact enough. One copy, then every step in
        # place (a dense round quantises the whole model: no extra temporaries).
        y = np.array(x, dtype=np.float64)
        if not np.isfinite(y).all():
            raise InvalidUpdateError("values to quantise contain NaN or Inf")
        clipped = int(
            np.count_nonzero(y > self.clip) + np.count_nonzero(y < -self.clip)
        )
        np.clip(y, -self.clip, self.clip, out=y)
        np.divide(y, self.scale, out=y)
        # floor(y + u), u ~ U[0, 1): rounds up with probability frac(y), so E = y.
        u = rng.random(y.shape)
        np.add(y, u, out=y)
        np.floor(y, out=y)
        # clip / scale may land a hair above qmax in floating point.
        np.clip(y, -self.qmax, self.qmax, out=y)
        return FixedPointCodes(y.astype(self.code_dtype), clipped)

    def dequantise(self, codes: np.ndarray) -> np.ndarray:
        """Codes (or a sum of codes, int64) -> float32 values: codes * scale."""
        return (codes.astype(np.float64) * self.scale).astype(np.float32)

    @property
    def code_dtype(self) -> np.dtype[np.signedinteger]:
        """int8 for b <= 8, int16 for b <= 16, else int32."""
        if self.value_bits <= 8:
            return np.dtype(np.int8)
        if self.value_bits <= 16:
            return np.dtype(np.int16)
        return np.dtype(np.int32)
