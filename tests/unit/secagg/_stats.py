"""A deterministic chi-square uniformity check for ring values (no scipy)."""

from __future__ import annotations

import math

import numpy as np

BINS = 256
Z_CRITICAL = 4.75
"""Upper tail ~1e-6: with fixed seeds the test is deterministic anyway; this
makes a pass mean "nothing a good PRG would not produce"."""


def chi_square_critical(dof: int, z: float = Z_CRITICAL) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile at normal z."""
    h = 2.0 / (9.0 * dof)
    return dof * (1.0 - h + z * math.sqrt(h)) ** 3


def chi_square_uniform(values: np.ndarray, bits: int) -> tuple[float, float]:
    """(statistic, critical value) for the top 8 bits of m-bit values in 256 bins.

    Top bits, because a ring element's high bits are what an unmasked small
    code leaves constant (all zeros or all ones): the clearest failure.
    """
    top = (values.astype(np.uint64) >> np.uint64(bits - 8)).astype(np.int64)
    counts = np.bincount(top, minlength=BINS)
    expected = values.size / BINS
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return statistic, chi_square_critical(BINS - 1)
