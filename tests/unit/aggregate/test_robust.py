"""Median and trimmed mean over a spool, against numpy on fixed inputs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgrpc.aggregate import (
    CoordinateMedian,
    SpoolAccumulator,
    StreamingSum,
    TrimmedMean,
    WeightedMean,
)
from fedgrpc.aggregate.blockwise import MIN_BLOCK_COORDINATES, spool_blocks
from fedgrpc.errors import ConfigError, InvalidUpdateError, WrongRoundError

D = 2500  # > 2 blocks of MIN_BLOCK_COORDINATES: the last block is narrower
SMALL_BLOCKS = 1  # byte budget below the minimum: blocks of 1024 coordinates


@pytest.fixture
def rounds(tmp_path: Path) -> Iterator[list[SpoolAccumulator]]:
    made: list[SpoolAccumulator] = []
    yield made
    for spool in made:
        spool.discard()


def _spooled(
    rounds: list[SpoolAccumulator],
    tmp_path: Path,
    updates: np.ndarray,
    weights: list[float] | None = None,
) -> SpoolAccumulator:
    spool = SpoolAccumulator(tmp_path / f"round-{len(rounds)}", updates.shape[1], 64)
    rounds.append(spool)
    for key, update in enumerate(updates):
        weight = 1.0 if weights is None else weights[key]
        spool.add_values(key, 0, update, weight, np.empty(0, np.float32))
        spool.commit_update(key, weight)
    return spool


def _aggregate(
    rule: CoordinateMedian | TrimmedMean | WeightedMean, spool: SpoolAccumulator
) -> np.ndarray:
    out = torch.full((spool.num_coordinates,), float("nan"))
    rule.aggregate(spool.held(), out)
    return out.numpy()


@pytest.mark.parametrize("n", [1, 2, 5, 6])
def test_median_matches_numpy_for_odd_and_even_counts(
    n: int, rounds: list[SpoolAccumulator], tmp_path: Path
) -> None:
    updates = np.random.default_rng(n).standard_normal((n, D)).astype(np.float32)
    spool = _spooled(
        rounds, tmp_path, updates, weights=[float(i + 1) for i in range(n)]
    )

    got = _aggregate(CoordinateMedian(block_bytes=SMALL_BLOCKS), spool)

    np.testing.assert_array_equal(got, np.median(updates, axis=0))


@pytest.mark.parametrize(
    ("n", "beta", "k"),
    [(10, 0.1, 1), (10, 0.25, 3), (7, 0.2, 2), (3, 0.4, 1), (5, 0.0, 0), (10, 0.3, 3)],
)
def test_trimmed_mean_matches_a_sort_based_reference(
    n: int, beta: float, k: int, rounds: list[SpoolAccumulator], tmp_path: Path
) -> None:
    updates = np.random.default_rng(n).standard_normal((n, D)).astype(np.float32)
    spool = _spooled(rounds, tmp_path, updates)
    assert TrimmedMean(beta).trimmed(n) == k

    got = _aggregate(TrimmedMean(beta, block_bytes=SMALL_BLOCKS), spool)

    expected = np.sort(updates.astype(np.float64), axis=0)[k : n - k].mean(axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_robust_rules_shrug_off_a_minority_of_huge_updates(
    rounds: list[SpoolAccumulator], tmp_path: Path
) -> None:
    honest = np.random.default_rng(0).normal(1.0, 0.1, (8, D)).astype(np.float32)
    attack = np.full((2, D), 1e6, np.float32)
    spool = _spooled(rounds, tmp_path, np.concatenate([honest, attack]))

    median = _aggregate(CoordinateMedian(), spool)
    trimmed = _aggregate(TrimmedMean(0.2), spool)
    mean = _aggregate(WeightedMean(), spool)

    assert np.abs(median - 1.0).max() < 0.5
    assert np.abs(trimmed - 1.0).max() < 0.5
    assert mean.min() > 1e5  # the plain mean is hijacked


def test_robust_rules_ignore_declared_sample_counts(
    rounds: list[SpoolAccumulator], tmp_path: Path
) -> None:
    updates = np.stack([np.zeros(D), np.zeros(D), np.full(D, 9.0)]).astype(np.float32)
    spool = _spooled(rounds, tmp_path, updates, weights=[1.0, 1.0, 1e9])

    assert np.all(_aggregate(CoordinateMedian(), spool) == 0.0)


def test_rules_that_need_every_update_refuse_a_sum() -> None:
    total = StreamingSum(torch.zeros(10))
    total.add_values("a", 0, np.ones(10, np.float32), 1.0, np.empty(10, np.float32))
    total.commit_update("a", 1.0)

    for rule in (CoordinateMedian(), TrimmedMean()):
        with pytest.raises(InvalidUpdateError, match="accumulator = 'spool'"):
            rule.aggregate(total.held(), torch.empty(10))


def test_an_empty_round_and_a_wrong_buffer_are_refused(
    rounds: list[SpoolAccumulator], tmp_path: Path
) -> None:
    empty = SpoolAccumulator(tmp_path / "empty", D, 4)
    rounds.append(empty)
    spool = _spooled(rounds, tmp_path, np.ones((2, D), np.float32))

    with pytest.raises(WrongRoundError, match="nothing to combine"):
        CoordinateMedian().aggregate(empty.held(), torch.empty(D))
    with pytest.raises(InvalidUpdateError, match="coordinates"):
        CoordinateMedian().aggregate(spool.held(), torch.empty(D + 1))
    with pytest.raises(InvalidUpdateError, match="float32"):
        TrimmedMean().aggregate(spool.held(), torch.empty(D, dtype=torch.float64))


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7, float("nan")])
def test_trimmed_mean_refuses_a_beta_outside_zero_to_half(beta: float) -> None:
    with pytest.raises(ConfigError, match="beta"):
        TrimmedMean(beta)


def test_blocks_stay_within_the_memory_budget(
    rounds: list[SpoolAccumulator], tmp_path: Path
) -> None:
    n, budget = 4, 4 * 4 * 1500  # 1500 coordinates per block for 4 updates
    spool = _spooled(rounds, tmp_path, np.arange(n * D, dtype=np.float32).reshape(n, D))

    seen = [
        (start, block.shape, block[:, 0].copy())
        for start, block in spool_blocks(spool.held(), budget)
    ]

    assert [(s, shape) for s, shape, _ in seen] == [(0, (4, 1500)), (1500, (4, 1000))]
    np.testing.assert_array_equal(seen[1][2], np.arange(n) * D + 1500)
    assert MIN_BLOCK_COORDINATES <= 1500


def test_the_default_trimmed_mean_cuts_one_attacker_among_eight(
    rounds: list[SpoolAccumulator], tmp_path: Path
) -> None:
    # 8 updates at the default beta 0.1: ceil(0.8) = 1 cut from each side.
    # Rounded down (the old rule) that was 0: the plain mean, which one
    # update of +1e6 moved by 1.25e5.
    updates = np.random.default_rng(1).normal(0.0, 1.0, (8, D)).astype(np.float32)
    updates[5] = 1e6
    spool = _spooled(rounds, tmp_path, updates)

    trimmed = _aggregate(TrimmedMean(), spool)

    honest = np.delete(updates, 5, axis=0)
    assert np.abs(trimmed).max() < np.abs(honest).max()
    expected = np.sort(updates.astype(np.float64), axis=0)[1:7].mean(axis=0)
    np.testing.assert_allclose(trimmed, expected, rtol=1e-5, atol=1e-6)
