"""The weighted mean: today's aggregation rule, over a sum or over every update.

    mean = Σ wᵢ·uᵢ / Σ wᵢ,   wᵢ = the client's declared sample count

(FedAvg, McMahan et al. 2017, Algorithm 1: the sample-weighted average). Over
the streaming sum it is one in-place division, the same op `StreamingSum.mean`
has always done, so results are bit-identical and, with `out` the sum's own
buffer, it costs no copy. Over a spool it is a weighted sum per block of
coordinates, (w / Σw)ᵀ · U_block, one BLAS call per block.
"""

from __future__ import annotations

import numpy as np
import torch

from fedgrpc.aggregate.blockwise import (
    DEFAULT_BLOCK_BYTES,
    as_spool,
    as_sum,
    check_out,
    require_committed,
    spool_blocks,
)
from fedgrpc.aggregate.stages import HeldUpdates, Holding


class WeightedMean:
    """Σ wᵢ·uᵢ / Σ wᵢ (needs only the sum; also reads a spool)."""

    def __init__(self, block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        """`block_bytes`: memory budget per block when reading a spool."""
        self.block_bytes = block_bytes

    @property
    def name(self) -> str:
        """Always `mean`."""
        return "mean"

    @property
    def needs(self) -> Holding:
        """`sum`: the weighted sum is all it needs."""
        return "sum"

    def aggregate(self, held: HeldUpdates, out: torch.Tensor) -> None:
        """Write the weighted mean into `out` (see `Aggregator.aggregate`)."""
        require_committed(held, self.name)
        if held.holding == "sum":
            total = as_sum(held).sum_tensor()
            check_out(out, total.numel())
            # torch's div with `out` the input itself is the in-place div_
            # StreamingSum.mean uses: same kernel, same bits.
            torch.div(total, held.total_weight, out=out)
            return
        spool = as_spool(held, self.name)
        values = check_out(out, spool.num_coordinates)
        # Normalise the weights once in float64, then run the per-block
        # product in float32 like the streaming sum does.
        share = (spool.weights() / held.total_weight).astype(np.float32)  # (n,)
        for start, block in spool_blocks(spool, self.block_bytes):  # block: (n, b)
            np.matmul(share, block, out=values[start : start + block.shape[1]])
