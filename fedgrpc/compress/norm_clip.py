"""Clip a flat update to an L2 norm, in place: the client-side norm bound.

Under secure aggregation the coordinator sees only the sum, so it cannot
bound any one client's update (the robust aggregators are refused there);
each honest client bounds its own instead (`ClientConfig.max_update_norm`),
as in DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning
Differentially Private Recurrent Language Models", per-user clipping):

    x ← x · min(1, B / ‖x‖₂)

The norm is summed in float64, a slice at a time (no float64 copy of a
model-sized vector); the scaling is one in-place float32 multiply.
"""

from __future__ import annotations

import math

import numpy as np

from fedgrpc.compress.blocks import F32Array
from fedgrpc.errors import ConfigError

_NORM_SLICE = 1 << 20
"""Coordinates per float64 partial sum: 8 MiB of temporary, whatever d is."""


def l2_norm(values: F32Array) -> float:
    """‖values‖₂ of a 1-D float32 vector, accumulated in float64 by slices."""
    total = 0.0
    for start in range(0, values.size, _NORM_SLICE):
        part = values[start : start + _NORM_SLICE].astype(np.float64)
        total += float(np.dot(part, part))
    return math.sqrt(total)


def clip_to_norm(values: F32Array, bound: float) -> float:
    """Scale `values` in place so that ‖values‖₂ <= bound; return the norm before.

    Raises:
        ConfigError: `bound` is not a finite number > 0.
    """
    if not (math.isfinite(bound) and bound > 0):
        raise ConfigError(f"max_update_norm={bound!r} is invalid: expected > 0")
    norm = l2_norm(values)
    if norm > bound:
        values *= np.float32(bound / norm)
    return norm
