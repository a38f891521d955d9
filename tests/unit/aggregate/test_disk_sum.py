"""A lean round's sum on disk holds the bits the in-RAM sum holds, block by block."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgrpc.aggregate import StagedSum, WeightedMean
from fedgrpc.aggregate.buffers import BufferPool
from fedgrpc.aggregate.stage import FOLD_BLOCK_COORDINATES
from fedgrpc.compress.blocks import SparseValues
from fedgrpc.errors import WrongRoundError

CHUNK = 1 << 18
SIZES = [1000, 2 * FOLD_BLOCK_COORDINATES + 777]
"""One partial block, and two whole blocks plus a partial one."""


def _updates(d: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """Mixed magnitudes (rounding matters), exact zeros and -0.0 (sign matters)."""
    rng = np.random.default_rng(seed)
    out = []
    for scale in 10.0 ** rng.integers(-3, 8, size=n):
        u = (rng.standard_normal(d) * scale).astype(np.float32)
        u[rng.integers(0, d, size=d // 10)] = -0.0
        u[rng.integers(0, d, size=d // 10)] = 0.0
        out.append(u)
    return out


def _push(acc: StagedSum, key: int, values: np.ndarray, weight: float) -> None:
    scratch = np.empty(CHUNK, dtype=np.float32)
    for start in range(0, values.size, CHUNK):
        acc.add_values(key, start, values[start : start + CHUNK], weight, scratch)


def _round(d: int, spill: Path, on_disk: bool, coded_first: bool = False) -> StagedSum:
    """Three dense updates (one of them broken off) and a coded one, budget 0."""
    staged = StagedSum(d, BufferPool(0), 0, spill, sum_on_disk=on_disk)
    updates, weights = _updates(d, 3), [3.0, 1.0, 7.0]
    sparse = SparseValues(
        np.array([0, 5, d // 2], np.int64), np.array([-0.0, 2.5, -1e-3], np.float32)
    )
    if coded_first:
        staged.add_block(99, 0, sparse, 2.0)
        staged.commit_update(99, 2.0)
    _push(staged, 100, updates[2][: d // 2], 5.0)  # breaks half-way
    for key, (u, w) in enumerate(zip(updates, weights, strict=True)):
        _push(staged, key, u, w)
        staged.commit_update(key, w)
    if not coded_first:
        staged.add_block(99, 0, sparse, 2.0)
        staged.commit_update(99, 2.0)
    staged.abandon(100)
    return staged


def _bits(values: torch.Tensor) -> np.ndarray:
    return values.numpy().view(np.uint32)


@pytest.mark.parametrize(
    "coded_first", [False, True], ids=["dense first", "coded first"]
)
@pytest.mark.parametrize("d", SIZES)
def test_the_sum_on_disk_and_its_mean_have_the_bits_of_the_sum_in_ram(
    tmp_path: Path, d: int, coded_first: bool
) -> None:
    ram, disk_round = (_round(d, tmp_path, on, coded_first) for on in (False, True))
    disk = disk_round.disk_sum
    assert disk is not None
    assert ram.disk_sum is None
    assert disk_round.total_weight == ram.total_weight == 13.0

    expected = ram.sum_tensor()
    assert np.array_equal(_bits(disk.read_all(torch.empty(d))), _bits(expected))
    mean = torch.empty(d)
    WeightedMean().aggregate(ram.held(), mean)
    blocks = [
        disk.mean_block(lo, min(d, lo + FOLD_BLOCK_COORDINATES), 13.0)
        for lo in range(0, d, FOLD_BLOCK_COORDINATES)
    ]
    assert np.array_equal(_bits(torch.cat(blocks)), _bits(mean))
    wide = mean.numpy().astype(np.float64)
    assert disk.mean_norm(13.0) == pytest.approx(float(np.sqrt(wide @ wide)), rel=1e-12)
    assert os.listdir(tmp_path) == []  # stages and the sum were never named
    for staged in (ram, disk_round):
        staged.discard()


def test_a_consumer_that_needs_the_sum_whole_reads_it_back_into_ram(
    tmp_path: Path,
) -> None:
    d = SIZES[0]
    ram, disk_round = (_round(d, tmp_path, on) for on in (False, True))
    whole = disk_round.sum_tensor()  # central noise, trust: the in-RAM path
    assert disk_round.disk_sum is None
    assert np.array_equal(_bits(whole), _bits(ram.sum_tensor()))
    disk_round.discard()
    with pytest.raises(WrongRoundError):
        disk_round.sum_tensor()


def test_a_lone_update_of_negative_zeros_sums_to_positive_zeros_as_in_ram(
    tmp_path: Path,
) -> None:
    d = SIZES[0]
    sums = []
    for on_disk in (False, True):
        staged = StagedSum(d, BufferPool(0), 0, tmp_path, sum_on_disk=on_disk)
        _push(staged, 0, np.full(d, -0.0, np.float32), 1.0)
        staged.commit_update(0, 1.0)
        sums.append(staged.sum_tensor())  # the adopted stage file, read back
    assert np.array_equal(_bits(sums[1]), _bits(sums[0]))
    assert not np.signbit(sums[1].numpy()).any()


def test_a_discarded_sum_on_disk_is_closed(tmp_path: Path) -> None:
    staged = _round(SIZES[0], tmp_path, on_disk=True)
    disk = staged.disk_sum
    assert disk is not None
    staged.discard()
    staged.discard()  # idempotent
    with pytest.raises(WrongRoundError):
        disk.read(0, np.empty(4, np.float32))
