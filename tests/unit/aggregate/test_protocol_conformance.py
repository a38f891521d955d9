"""The built-ins satisfy the stage Protocols (checked statically by mypy, run here).

mypy checks the annotated assignments below; the test body also runs them so
a member renamed at runtime fails here too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedgrpc.aggregate import (
    Accumulator,
    Aggregator,
    CoordinateMedian,
    HeldSpool,
    HeldSum,
    SpoolAccumulator,
    StagedSum,
    StreamingSum,
    TrimmedMean,
    WeightedMean,
)
from fedgrpc.aggregate.buffers import BufferPool


def test_built_ins_implement_the_stage_protocols(tmp_path: Path) -> None:
    total = StreamingSum(torch.zeros(4))
    spool = SpoolAccumulator(tmp_path / "round", 4, 2)
    staged = StagedSum(4, BufferPool(1 << 20), 1 << 20)
    accumulators: list[Accumulator] = [total, spool, staged]
    held_sum: HeldSum = total.held()
    held_staged: HeldSum = staged.held()
    held_spool: HeldSpool = spool.held()
    aggregators: list[Aggregator] = [WeightedMean(), CoordinateMedian(), TrimmedMean()]

    assert [a.holding for a in accumulators] == ["sum", "every_update", "sum"]
    assert [a.voids_on_abandon for a in accumulators] == [True, False, False]
    assert held_staged.holding == "sum"
    assert held_sum.holding == "sum"
    assert held_spool.holding == "every_update"
    assert [a.needs for a in aggregators] == ["sum", "every_update", "every_update"]
    assert [a.name for a in aggregators] == ["mean", "median", "trimmed_mean"]
    spool.discard()
