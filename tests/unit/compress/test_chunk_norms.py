"""Chunk-norm selection of the shared index set (compress.chunk_norms)."""

from __future__ import annotations

import numpy as np
import pytest

from fedgrpc.compress.chunk_norms import (
    MAX_CHUNKS,
    choose_chunk_set,
    chunk_rms,
    chunk_scores,
    num_chunks,
)
from fedgrpc.errors import ConfigError, InvalidUpdateError
from fedgrpc.secagg.fixed_point import FixedPointScale

SEED = b"round-seed-0001"


def tail_codes(
    residual: np.ndarray, chunk: int, scale: FixedPointScale, rng: np.random.Generator
) -> np.ndarray:
    """What a client appends (client.secure.updates): RMS per chunk, as codes."""
    return scale.quantise(chunk_rms(residual, chunk), rng).codes


def test_chunk_rms_is_the_root_mean_square_per_chunk_and_the_short_last_chunk_its_own():
    residual = np.array([3, 4, 0, 0, 1, -1, 2], dtype=np.float32)
    rms = chunk_rms(residual, 3)
    expected = [np.sqrt(25 / 3), np.sqrt(2 / 3), 2.0]
    np.testing.assert_allclose(rms, expected, rtol=1e-12)


def test_the_tail_is_bounded_by_ceil_d_over_chunk_and_codes_by_qmax():
    rng = np.random.default_rng(0)
    residual = rng.normal(0, 10, 1001).astype(np.float32)  # far above the clip
    scale = FixedPointScale(0.5, 8)
    codes = tail_codes(residual, 64, scale, rng)
    assert codes.size == num_chunks(1001, 64) == 16
    assert codes.min() >= 0
    assert codes.max() == scale.qmax  # clipped, never more
    with pytest.raises(ConfigError):
        num_chunks(10, 0)
    with pytest.raises(ConfigError):
        num_chunks(MAX_CHUNKS + 1, 1)


def test_tail_codes_are_unbiased_estimates_of_the_rms():
    residual = np.full(640, 0.013, dtype=np.float32)
    scale = FixedPointScale(1.0, 8)
    rng = np.random.default_rng(1)
    mean = np.mean([tail_codes(residual, 64, scale, rng) for _ in range(400)])
    assert mean * scale.scale == pytest.approx(0.013, rel=0.05)


def test_the_set_takes_whole_chunks_by_score_then_random_positions():
    d, chunk = 100, 10
    scores = np.zeros(10, dtype=np.int64)
    scores[[7, 2]] = [50, 20]
    positions = choose_chunk_set(scores, chunk, d, 25, 0.2, SEED)
    assert positions.numel() == 25
    assert bool((positions[1:] > positions[:-1]).all())
    top = set(range(70, 80)) | set(range(20, 30))
    assert top <= set(positions.tolist())  # (1 - 0.2) x 25 = 20: both chunks
    assert len(set(positions.tolist()) - top) == 5  # the random part, disjoint


def test_the_set_is_a_pure_function_of_the_scores_and_the_seed():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 500, 313)
    a = choose_chunk_set(scores, 32, 10_000, 1_000, 0.1, SEED)
    b = choose_chunk_set(scores.copy(), 32, 10_000, 1_000, 0.1, SEED)
    c = choose_chunk_set(scores, 32, 10_000, 1_000, 0.1, b"another-seed")
    assert bool((a == b).all())
    assert not bool((a == c).all())


def test_ties_between_chunks_are_broken_by_the_seed_not_by_position():
    """Saturated chunks all tie: the start of the model must not always win."""
    scores = np.full(100, 7, dtype=np.int64)
    firsts = set()
    for i in range(20):
        positions = choose_chunk_set(scores, 10, 1_000, 10, 0.0, b"seed-%d" % i)
        assert positions.numel() == 10
        first = int(positions[0])
        assert positions.tolist() == list(range(first, first + 10))  # one chunk
        firsts.add(first)
    assert len(firsts) > 10


def test_zero_scores_give_an_all_random_set_and_a_cut_chunk_its_lowest_positions():
    empty = choose_chunk_set(np.zeros(10, dtype=np.int64), 10, 100, 15, 0.0, SEED)
    assert empty.numel() == 15
    scores = np.zeros(10, dtype=np.int64)
    scores[4] = 9
    cut = choose_chunk_set(scores, 10, 95, 5, 0.0, SEED)
    assert cut.tolist() == [40, 41, 42, 43, 44]


def test_scores_are_clamped_so_a_client_moves_chunks_only_within_the_range():
    total = np.array([-5_000, 10, 1 << 40, 254], dtype=np.int64)
    scores = chunk_scores(total, contributors=2, qmax=127)
    assert scores.tolist() == [0, 10, 254, 254]
    with pytest.raises(InvalidUpdateError):
        choose_chunk_set(np.array([1, -1]), 10, 20, 5, 0.0, SEED)
    with pytest.raises(InvalidUpdateError):
        choose_chunk_set(np.array([1, 2, 3]), 10, 20, 5, 0.0, SEED)
