"""A lean round's outer step, read block by block from its sum on disk.

With the lean settings (`staging_memory_mb = 0`, `outer_state_on_disk`)
every update is staged on disk and the outer optimizer's state is stepped
4 MiB at a time, so the last model-sized buffer a round held besides the
master weights was its sum. That sum can stay on disk too (`DiskSum`) when
nothing needs the whole mean in RAM; the round then applies as

    norm  = ‖sum / Σw‖                     one pass over the file (`DiskSum.mean_norm`)
    guard = NormGuard.judge(norm)          as `GlobalModel.divergence`
    for each 4 MiB block [lo, hi):         `DiskStateOptimizer.step_blocks`
        g = sum[lo:hi] / Σw                (buffers' coordinates taken out)
        step master[lo:hi] with g and the state's block
    master[buffers] -= their mean          `buffer_means`

which is the in-RAM path op for op on each coordinate, so the weights and
the optimizer state come out bit-identical (tests pin it through a real
coordinator). Only the guard's norm differs in its last bits (see
`DiskSum.mean_norm`). RAM at the peak: the master weights and a few 4 MiB
blocks; the file's pages live in the kernel's page cache.

What needs the mean whole keeps the in-RAM path, decided once at start
(`strategy.wiring.lean_sum`, `RoundStages.sum_on_disk`): central DP (its
clip and noise), secure aggregation (its ring), a robust or plugin
aggregator or a norm bound (not the plain mean over a sum), trust scores
(they read every update and the mean), a compressed downlink (its
residual), shards and streaming fragments (a range of the model), and a
tree leaf (it relays the mean to its root).
"""

from __future__ import annotations

import torch

from fedgrpc.aggregate import Accumulator, StagedSum
from fedgrpc.coordinator.rounds.buffer_means import (
    BufferMeans,
    apply_buffer_means,
    take_buffer_means,
)
from fedgrpc.coordinator.rounds.global_model import GlobalModel
from fedgrpc.coordinator.rounds.records import OpenRound
from fedgrpc.errors import WrongRoundError
from fedgrpc.optim.offload import DiskStateOptimizer


def steps_from_disk(total: Accumulator, model: GlobalModel) -> bool:
    """True if the round's sum is on disk and `model` can step from it.

    False sends the round down the in-RAM path (`StagedSum.sum_tensor`
    reads a sum on disk back whole), as for an outer optimizer that keeps
    its state in RAM.
    """
    return (
        isinstance(total, StagedSum)
        and total.disk_sum is not None
        and isinstance(model.optimizer, DiskStateOptimizer)
    )


def apply_from_disk(
    model: GlobalModel, closing: OpenRound, copy_on_write: bool
) -> bool:
    """Judge and apply `closing`'s mean, read from its sum on disk; True if applied.

    As `divergence` then `step` (no downlink, no fragment) on the mean in
    RAM; a round the guard refuses gets its `void_reason`. The caller
    discards the sum afterwards.

    Raises:
        WrongRoundError: `steps_from_disk` is False for this round.
    """
    total, optimizer = closing.total, model.optimizer
    if not isinstance(total, StagedSum) or total.disk_sum is None:
        raise WrongRoundError("this round's sum is not on disk; aggregate it in RAM")
    if not isinstance(optimizer, DiskStateOptimizer):
        raise WrongRoundError("a sum on disk needs outer_state_on_disk = true")
    disk, weight = total.disk_sum, total.total_weight
    # The norm is finite iff every coordinate is, so a round the guard lets
    # through meets `step_blocks`'s precondition.
    blown = model.divergence_of(disk.mean_norm(weight), closing.round_id)
    if blown is not None:
        closing.void_reason = blown
        return False
    master = model.working_master(copy_on_write)
    slots = model.require_spec().buffer_slots
    averaged: BufferMeans = []

    def gradient(lo: int, hi: int) -> torch.Tensor:
        block = disk.mean_block(lo, hi, weight)
        for (start, stop), mean_delta in take_buffer_means(slots, block, lo):
            averaged.append(((lo + start, lo + stop), mean_delta))
        return block

    optimizer.step_blocks(master, gradient)
    apply_buffer_means(master, averaged)
    model.publish_step(master, closing.round_id)
    return True
