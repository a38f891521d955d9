"""The staged sum: only committed updates reach it, bit for bit, in RAM or on disk."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgrpc.aggregate import StagedSum, StreamingSum, WeightedMean
from fedgrpc.aggregate.buffers import BufferPool
from fedgrpc.compress.blocks import SparseValues
from fedgrpc.errors import InvalidUpdateError, TooLargeError, WrongRoundError

D = 1000
CHUNK = 300


def _updates(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.integers(-3, 8, size=n)  # mixed magnitudes: rounding matters
    return [(rng.standard_normal(D) * s).astype(np.float32) for s in scales]


def _push(acc: StagedSum | StreamingSum, key: int, values: np.ndarray, weight: float,
          upto: int = D) -> None:  # fmt: skip
    scratch = np.empty(CHUNK, dtype=np.float32)
    for start in range(0, upto, CHUNK):
        part = values[start : min(start + CHUNK, upto)]
        acc.add_values(key, start, part, weight, scratch)


def _mean(acc: StagedSum | StreamingSum) -> torch.Tensor:
    out = torch.empty(D)
    WeightedMean().aggregate(acc.held(), out)
    return out


def _reference(updates: list[np.ndarray], weights: list[float]) -> torch.Tensor:
    """The plain streaming sum over the complete updates only."""
    total = StreamingSum(torch.zeros(D))
    for key, (u, w) in enumerate(zip(updates, weights, strict=True)):
        _push(total, key, u, w)
        total.commit_update(key, w)
    return _mean(total)


@pytest.mark.parametrize("budget", [1 << 30, 0], ids=["in memory", "on disk"])
def test_a_broken_update_leaves_the_mean_of_the_complete_ones_bit_for_bit(
    tmp_path: Path, budget: int
) -> None:
    good, bad = _updates(3), _updates(2, seed=1)
    weights = [3.0, 1.0, 7.0]
    staged = StagedSum(D, BufferPool(1 << 30), budget, tmp_path)
    _push(staged, 100, bad[0], 5.0, upto=2 * CHUNK)  # breaks after 2 chunks
    for key, (u, w) in enumerate(zip(good, weights, strict=True)):
        _push(staged, key, u, w)
        if key == 1:
            _push(staged, 101, bad[1], 9.0, upto=CHUNK)
        staged.commit_update(key, w)
    assert staged.abandon(100) is False
    assert staged.abandon(101) is False

    assert torch.equal(_mean(staged), _reference(good, weights))
    assert staged.spilled == (5 if budget == 0 else 0)
    staged.discard()
    assert os.listdir(tmp_path) == []  # spilled stages were never named on disk


def test_the_first_commit_becomes_the_sum_and_buffers_are_reused() -> None:
    pool = BufferPool(1 << 30)
    first = StagedSum(D, pool, 1 << 30)
    (u,) = _updates(1)
    _push(first, 0, u, 1.0)
    first.commit_update(0, 1.0)
    buffer = first.sum_tensor()
    assert np.array_equal(buffer.numpy(), u)  # no add, no copy beyond the stage
    first.discard()
    second = StagedSum(D, pool, 1 << 30)
    _push(second, 0, u, 1.0)
    second.commit_update(0, 1.0)
    assert second.sum_tensor() is buffer


def test_past_the_budget_stages_spill_and_ram_stays_bounded(tmp_path: Path) -> None:
    staged = StagedSum(
        D, BufferPool(1 << 30), budget_bytes=2 * 4 * D, spill_dir=tmp_path
    )
    for key in range(5):
        _push(staged, key, np.ones(D, np.float32), 1.0, upto=CHUNK)
    assert staged.staged_bytes == 2 * 4 * D
    assert staged.spilled == 3
    staged.discard()


def test_coded_blocks_are_staged_as_sent_and_replayed_at_commit() -> None:
    staged = StagedSum(D, BufferPool(1 << 30), 1 << 30)
    reference = StreamingSum(torch.zeros(D))
    block = SparseValues(np.array([1, 5, 9]), np.array([1.5, -2.0, 3.25], np.float32))
    for acc in (staged, reference):
        acc.add_block(0, 10, block, 2.0)
        acc.add_block(0, 500, block, 2.0)
        acc.commit_update(0, 2.0)
    staged.add_block(1, 0, block, 4.0)  # broken
    staged.abandon(1)
    assert torch.equal(staged.sum_tensor(), reference.sum_tensor())


def test_a_hostile_update_cannot_write_out_of_order_or_past_the_model() -> None:
    staged = StagedSum(D, BufferPool(1 << 30), 1 << 30)
    scratch = np.empty(D + 1, np.float32)
    staged.add_values(0, 0, np.ones(CHUNK, np.float32), 1.0, scratch)
    with pytest.raises(InvalidUpdateError, match="send chunks in order"):
        staged.add_values(0, 0, np.ones(CHUNK, np.float32), 1.0, scratch)
    with pytest.raises(TooLargeError, match="more than the model's"):
        staged.add_values(0, CHUNK, np.ones(D, np.float32), 1.0, scratch)
    with pytest.raises(InvalidUpdateError, match=f"covers {CHUNK} of {D}"):
        staged.commit_update(0, 1.0)
    with pytest.raises(InvalidUpdateError, match="without values"):
        staged.commit_update(7, 1.0)
    with pytest.raises(InvalidUpdateError, match="mix raw values"):
        staged.add_block(0, 0, SparseValues(np.array([0]), np.ones(1, np.float32)), 1.0)
    staged.discard()
    with pytest.raises(WrongRoundError):
        staged.add_values(1, 0, np.ones(CHUNK, np.float32), 1.0, scratch)


def test_the_pool_keeps_spares_up_to_its_budget_and_each_only_once() -> None:
    pool = BufferPool(keep_bytes=2 * 4 * D)
    a, b, c = (pool.take(D) for _ in range(3))
    for buffer in (a, a, b, c):
        pool.give(buffer)
    assert pool.spare_bytes == 2 * 4 * D
    assert pool.take_zeroed(D).abs().sum() == 0
