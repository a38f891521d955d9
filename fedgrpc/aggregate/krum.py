"""Krum and Multi-Krum: keep the updates that sit closest to their neighbours.

Blanchard, El Mhamdi, Guerraoui, Stainer 2017, "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent" (NeurIPS). With n updates
of which at most f are Byzantine (2f + 2 < n):

    score(i) = Σ_{j ∈ N(i)} ‖uᵢ - uⱼ‖²,
    N(i) = the n - f - 2 updates closest to uᵢ (j ≠ i)
    Krum       = u_{i*},  i* = argminᵢ score(i)
    Multi-Krum = (1/m) Σ_{i ∈ S} uᵢ,  S = the m updates of lowest score

Multi-Krum with m = 1 is Krum; the paper's experiments use m = n - f (our
default). Both are *unweighted*, as in the paper: a client's claimed sample
count plays no part, so it cannot buy its way in. Ties go to the update
committed first (a stable sort).

Memory: the n x n distance matrix is accumulated block by block from the
spool (`passes.pairwise_squared_distances`), then a second pass averages
the chosen rows into `out`; RAM is O(n² + n x block) besides `out`.

f and m are per-run settings but n changes every round: a round with too
few updates for the configured f (2f + 2 ≥ n) uses the largest f that fits
and says so in the log, rather than failing the round.
"""

from __future__ import annotations

import numpy as np
import torch

from fedgrpc.aggregate.blockwise import (
    DEFAULT_BLOCK_BYTES,
    as_spool,
    check_out,
    require_committed,
)
from fedgrpc.aggregate.passes import combine, pairwise_squared_distances
from fedgrpc.aggregate.stages import F64Array, HeldUpdates, Holding
from fedgrpc.errors import ConfigError
from fedgrpc.log import get_logger

log = get_logger(__name__)


def max_byzantine(n: int) -> int:
    """The largest f with 2f + 2 < n (0 when n <= 3): Krum's tolerance at n."""
    return max(0, (n - 3) // 2)


def krum_scores(distances: F64Array, f: int) -> F64Array:
    """score(i): the sum of the n - f - 2 smallest ‖uᵢ - uⱼ‖², j ≠ i.

    With n <= 2 (no neighbour to count) every score is 0: the first update wins.
    """
    n = distances.shape[0]
    neighbours = max(0, min(n - f - 2, n - 1))
    if neighbours == 0:
        return np.zeros(n, dtype=np.float64)
    others = distances + np.diag(np.full(n, np.inf))  # never count oneself
    nearest = np.partition(others, neighbours - 1, axis=1)[:, :neighbours]
    scores: F64Array = nearest.sum(axis=1)
    return scores


class MultiKrum:
    """Average of the m updates of lowest Krum score (Blanchard et al. 2017)."""

    def __init__(
        self,
        f: int | None = None,
        m: int | None = None,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        rule: str = "multi_krum",
    ) -> None:
        """`f`: Byzantine updates assumed (None: most n allows); `m`: (n - f).

        Raises:
            ConfigError: f < 0 or m < 1.
        """
        if f is not None and f < 0:
            raise ConfigError(f"krum_f={f!r} is invalid: expected >= 0 (or unset)")
        if m is not None and m < 1:
            raise ConfigError(
                f"multi_krum_m={m!r} is invalid: expected >= 1 (or unset: n - f)"
            )
        self.f, self.m = f, m
        self.block_bytes = block_bytes
        self._rule = rule

    @property
    def name(self) -> str:
        """`multi_krum`, or `krum` for the m = 1 rule."""
        return self._rule

    @property
    def needs(self) -> Holding:
        """`every_update`: scores need each pair of updates."""
        return "every_update"

    def round_f_m(self, n: int) -> tuple[int, int]:
        """The (f, m) this round of n updates uses (see the module docstring)."""
        most = max_byzantine(n)
        f = most if self.f is None else min(self.f, most)
        if self.f is not None and f < self.f:
            log.warning(
                "krum_f_reduced", rule=self._rule, krum_f=self.f, used_f=f, updates=n,
                reason="krum needs 2f + 2 < n updates",
            )  # fmt: skip
        m = n - f if self.m is None else min(self.m, n)
        return f, max(m, 1)

    def select(self, distances: F64Array) -> F64Array:
        """The selected rows as averaging coefficients: 1/m on each of the m chosen."""
        n = distances.shape[0]
        f, m = self.round_f_m(n)
        order = np.argsort(krum_scores(distances, f), kind="stable")
        coef = np.zeros(n, dtype=np.float64)
        coef[order[:m]] = 1.0 / m
        log.debug("krum_selected", rule=self._rule, f=f, m=m, updates=n)
        return coef

    def aggregate(self, held: HeldUpdates, out: torch.Tensor) -> None:
        """Write the (Multi-)Krum aggregate into `out` (see `Aggregator`)."""
        require_committed(held, self.name)
        spool = as_spool(held, self.name)
        values = check_out(out, spool.num_coordinates)
        distances = pairwise_squared_distances(spool, self.block_bytes)
        combine(spool, self.select(distances), values, self.block_bytes)


def krum(f: int | None = None, block_bytes: int = DEFAULT_BLOCK_BYTES) -> MultiKrum:
    """Krum: the single update of lowest score (Multi-Krum with m = 1)."""
    return MultiKrum(f=f, m=1, block_bytes=block_bytes, rule="krum")
