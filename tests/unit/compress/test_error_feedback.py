"""Error feedback: mass conservation over rounds, decay, restore, tiling."""

from __future__ import annotations

import numpy as np
import pytest

from fedgrpc.compress import (
    ErrorFeedback,
    SparseValues,
    TopK,
    make_codec,
    parse_codec,
)
from fedgrpc.errors import ConfigError

D = 150_001  # three top-k blocks, the last one partial
CHUNK_BYTES = 1 << 16


def _deltas(rounds: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal(D) * rng.exponential(1.0, D)).astype(np.float32)
        for _ in range(rounds)
    ]


@pytest.mark.parametrize("spec", ["topk:0.01:int8", "topk:0.1:int4", "dense:int4"])
def test_sent_plus_residual_equals_the_sum_of_deltas(spec: str) -> None:
    codec = make_codec(parse_codec(spec), rng=np.random.default_rng(1))
    feedback = ErrorFeedback(D)
    sent_total = np.zeros(D, dtype=np.float64)
    deltas = _deltas(6)

    for delta in deltas:
        feedback.accumulate(delta)
        for block in feedback.encode_blocks(codec, CHUNK_BYTES):
            sent = np.zeros(block.count, dtype=np.float32)
            block.encoded.sent.add_into(sent)
            sent_total[block.offset : block.offset + block.count] += sent

    expected = np.sum(deltas, axis=0, dtype=np.float64)
    actual = sent_total + feedback.residual
    # float32 residual: each round adds at most a few ulps of |e| per element.
    np.testing.assert_allclose(
        actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max()
    )
    assert abs(actual.sum() - expected.sum()) <= 1e-5 * np.abs(expected).sum()


def test_residual_is_exactly_what_was_not_sent() -> None:
    codec = make_codec(TopK(density=0.05, bits=8), rng=np.random.default_rng(0))
    feedback = ErrorFeedback(D)
    (delta,) = _deltas(1)
    feedback.accumulate(delta)

    blocks = list(feedback.encode_blocks(codec, CHUNK_BYTES))

    offsets = [b.offset for b in blocks]
    assert offsets == list(range(0, D, codec.block_coordinates(CHUNK_BYTES)))
    assert sum(b.count for b in blocks) == D
    expected = delta.copy()
    for block in blocks:
        block.encoded.sent.add_into(
            expected[block.offset : block.offset + block.count], -1
        )
    np.testing.assert_array_equal(feedback.residual, expected)


def test_restore_undoes_subtract() -> None:
    feedback = ErrorFeedback(10)
    feedback.accumulate(np.arange(10, dtype=np.float32))
    sent = SparseValues(np.array([2, 9]), np.array([2.0, 9.0], dtype=np.float32))

    feedback.subtract(0, sent)
    assert feedback.residual[2] == 0
    assert feedback.residual[9] == 0
    feedback.restore(0, sent)

    np.testing.assert_array_equal(feedback.residual, np.arange(10))


def test_decay_scales_the_old_residual_before_adding() -> None:
    feedback = ErrorFeedback(3, decay=0.5)
    feedback.accumulate(np.array([4, 8, 0], dtype=np.float32))
    feedback.accumulate(np.array([1, 1, 1], dtype=np.float32))

    np.testing.assert_array_equal(feedback.residual, [3, 5, 1])


def test_reset_drops_the_carried_residual_and_reports_its_norm() -> None:
    feedback = ErrorFeedback(3)
    feedback.accumulate(np.array([3, 0, 4], dtype=np.float32))

    dropped = feedback.reset()
    feedback.accumulate(np.array([1, 2, 3], dtype=np.float32))

    assert dropped == 5.0
    np.testing.assert_array_equal(feedback.residual, [1, 2, 3])


def test_bad_use_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"decay=1.5 is invalid"):
        ErrorFeedback(3, decay=1.5)
    with pytest.raises(ConfigError, match="decay=0"):
        ErrorFeedback(3, decay=0)
    feedback = ErrorFeedback(3)
    with pytest.raises(ValueError, match="float32 of shape"):
        feedback.accumulate(np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match="outside the 3-coordinate residual"):
        feedback.subtract(2, SparseValues(np.array([1]), np.ones(1, np.float32)))
    with pytest.raises(ValueError, match="read-only"):
        feedback.residual[0] = 1.0
