"""The norm-bound pre-step, and the hybrid rule (norm bound, then trimmed mean).

A scaling attack needs no outlier coordinate: one update 1000x longer than
the others wins the mean. Bounding each update's L2 norm before the rule
runs caps any one client's pull (Sun, Kairouz, Suresh, McMahan 2019, "Can
You Really Backdoor Federated Learning?", norm difference clipping):

    uᵢ ← uᵢ · min(1, B / ‖uᵢ‖)

with B either fixed (`norm_bound`) or a multiple k of the round's median
update norm (`norm_bound_multiple`: B = k · medianᵢ ‖uᵢ‖, scale-free; a
minority cannot move the median far). The clipped updates are never written
anywhere: `ScaledSpool` multiplies each block's rows as they are read, so the
pre-step costs one pass (the norms) and no memory.

`NormBounded(inner)` runs any rule that reads a spool on the clipped
updates; `hybrid` is `NormBounded(TrimmedMean(β))`, which resists both a
few long updates (clipped) and a few outlying coordinates (trimmed).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fedgrpc.aggregate.blockwise import (
    DEFAULT_BLOCK_BYTES,
    as_spool,
    require_committed,
)
from fedgrpc.aggregate.passes import squared_norms
from fedgrpc.aggregate.robust import TrimmedMean
from fedgrpc.aggregate.stages import (
    Aggregator,
    F32Array,
    F64Array,
    HeldSpool,
    HeldUpdates,
    Holding,
)
from fedgrpc.errors import ConfigError
from fedgrpc.log import get_logger

log = get_logger(__name__)

DEFAULT_HYBRID_MULTIPLE = 1.0
"""`hybrid` without a bound clips to the median norm (B = 1 x median)."""


class ScaledSpool:
    """A `HeldSpool` whose row i reads as scaleᵢ · uᵢ (no copy of any update)."""

    def __init__(self, spool: HeldSpool, scale: F64Array) -> None:
        self._spool = spool
        self._scale = scale.astype(np.float32)[:, None]  # (n, 1), broadcast per block

    @property
    def holding(self) -> Holding:
        """`every_update`."""
        return "every_update"

    @property
    def count(self) -> int:
        """Updates committed."""
        return self._spool.count

    @property
    def total_weight(self) -> float:
        """Σ wᵢ of the underlying spool (clipping changes values, not weights)."""
        return self._spool.total_weight

    @property
    def num_coordinates(self) -> int:
        """D."""
        return self._spool.num_coordinates

    def weights(self) -> F64Array:
        """wᵢ of the underlying spool."""
        return self._spool.weights()

    def read_block(self, start: int, out: F32Array) -> None:
        """Row i of `out` = scaleᵢ · uᵢ[start : start + b]."""
        self._spool.read_block(start, out)
        out *= self._scale

    def known_squared_norms(self) -> F64Array | None:
        """scaleᵢ² · ‖uᵢ‖², if the underlying spool knows ‖uᵢ‖²."""
        inner = self._spool.known_squared_norms()
        if inner is None:
            return None
        scaled: F64Array = inner * np.square(self._scale[:, 0].astype(np.float64))
        return scaled


def clip_scales(norms: F64Array, bound: float) -> F64Array:
    """min(1, B / ‖uᵢ‖) per update; 1 for a zero update."""
    scales: F64Array = np.minimum(1.0, bound / np.maximum(norms, 1e-300))
    return scales


class NormBounded:
    """Clip every update to an L2 bound, then run `inner` on the clipped updates."""

    def __init__(
        self,
        inner: Aggregator,
        bound: float | None = None,
        multiple: float | None = None,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        rule: str | None = None,
    ) -> None:
        """Exactly one of `bound` (B, fixed) or `multiple` (B = k x median norm).

        Raises:
            ConfigError: neither or both given, or not a finite number > 0.
        """
        if (bound is None) == (multiple is None):
            raise ConfigError(
                "norm_bound and norm_bound_multiple are exclusive and one is "
                f"needed: got norm_bound={bound!r}, norm_bound_multiple={multiple!r}"
            )
        for setting, value in (
            ("norm_bound", bound),
            ("norm_bound_multiple", multiple),
        ):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"{setting}={value!r} is invalid: expected a number > 0"
                )
        self.inner = inner
        self.bound, self.multiple = bound, multiple
        self.block_bytes = block_bytes
        self._rule = rule or inner.name
        self.last_bound = math.nan
        """B of the last round (for logs, tests and the bench)."""

    @property
    def name(self) -> str:
        """The inner rule's name (`hybrid` for the built-in pipeline)."""
        return self._rule

    @property
    def needs(self) -> Holding:
        """`every_update`: each update is clipped on its own."""
        return "every_update"

    def round_bound(self, norms: F64Array) -> float:
        """B for this round: the fixed bound, or k x the median norm."""
        if self.bound is not None:
            return self.bound
        assert self.multiple is not None  # __init__: exactly one is set
        return self.multiple * float(np.median(norms))

    def aggregate(self, held: HeldUpdates, out: torch.Tensor) -> None:
        """The norms, then `inner` over the clipped view.

        The norms were summed as the spool was written; a spool that did not
        (another Accumulator) costs one pass for them.
        """
        require_committed(held, self.name)
        spool = as_spool(held, self.name)
        known = spool.known_squared_norms()
        if known is None:
            known = squared_norms(spool, self.block_bytes)
        norms = np.sqrt(known)
        bound = self.last_bound = self.round_bound(norms)
        scales = clip_scales(norms, bound)
        log.debug(
            "norm_bound_applied", rule=self.name, bound=bound,
            clipped=int(np.count_nonzero(scales < 1.0)), updates=spool.count,
        )  # fmt: skip
        self.inner.aggregate(ScaledSpool(spool, scales), out)

    def state_dict(self) -> dict[str, Any]:
        """The inner rule's state, if it has one (centered clipping)."""
        method = getattr(self.inner, "state_dict", None)
        return dict(method()) if callable(method) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Hand a checkpoint's state to the inner rule, if it keeps one."""
        method = getattr(self.inner, "load_state_dict", None)
        if callable(method):
            method(state)


def hybrid(
    beta: float = 0.1,
    bound: float | None = None,
    multiple: float | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> NormBounded:
    """Norm bound (default: 1 x the median norm), then the β-trimmed mean."""
    if bound is None and multiple is None:
        multiple = DEFAULT_HYBRID_MULTIPLE
    inner = TrimmedMean(beta=beta, block_bytes=block_bytes)
    return NormBounded(inner, bound, multiple, block_bytes, rule="hybrid")
