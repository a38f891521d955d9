"""StreamingSum as the default Accumulator: keyed adds, abandon rules, zero copies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgrpc.aggregate import StreamingSum, WeightedMean
from fedgrpc.compress import DenseValues, SparseValues
from fedgrpc.errors import InvalidUpdateError, TooLargeError, WrongRoundError

D = 600


def _scratch() -> np.ndarray:
    return np.empty(D, np.float32)


def _updates(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(D).astype(np.float32) for _ in range(n)]


def test_protocol_adds_give_the_same_bits_as_the_old_chunk_adds() -> None:
    updates, weights = _updates(3), [3.0, 1.0, 7.0]
    old, new = StreamingSum(torch.zeros(D)), StreamingSum(torch.zeros(D))
    for key, (update, weight) in enumerate(zip(updates, weights, strict=True)):
        for start in range(0, D, 128):
            chunk = update[start : start + 128]
            old.add_chunk(start, chunk, weight, _scratch())
            new.add_values(key, start, chunk, weight, _scratch())
        old.commit(weight)
        new.commit_update(key, weight)

    assert torch.equal(new.sum_tensor(), old.sum_tensor())
    assert new.count == 3
    assert new.total_weight == 11.0


def test_weighted_mean_in_the_sum_buffer_is_bit_identical_and_copies_nothing() -> None:
    updates = _updates(2)
    reference, total = StreamingSum(torch.zeros(D)), StreamingSum(torch.zeros(D))
    for key, update in enumerate(updates):
        for acc in (reference, total):
            acc.add_values(key, 0, update, 2.0 + key, _scratch())
            acc.commit_update(key, 2.0 + key)
    buffer = total.sum_tensor()

    WeightedMean().aggregate(total.held(), buffer)

    expected = reference.mean()
    assert torch.equal(buffer, expected)
    assert buffer.data_ptr() == total.sum_tensor().data_ptr()


def test_weighted_mean_into_a_separate_buffer_leaves_the_sum_alone() -> None:
    total = StreamingSum(torch.zeros(D))
    total.add_values("a", 0, np.full(D, 4.0, np.float32), 2.0, _scratch())
    total.commit_update("a", 2.0)
    out = torch.empty(D)

    WeightedMean().aggregate(total.held(), out)

    assert torch.all(out == 4.0)
    assert torch.all(total.sum_tensor() == 8.0)


def test_decoded_blocks_add_with_their_weight() -> None:
    total = StreamingSum(torch.zeros(D))
    dense = DenseValues(np.arange(10, dtype=np.float32))
    sparse = SparseValues(np.array([0, 5], np.int64), np.array([1.0, 2.0], np.float32))

    total.add_block("a", 100, dense, 2.0)
    total.add_block("b", 100, sparse, 3.0)

    values = total.sum_tensor().numpy()
    np.testing.assert_array_equal(
        values[100:110], 2.0 * np.arange(10) + [3, 0, 0, 0, 0, 6, 0, 0, 0, 0]
    )
    assert values[:100].sum() == 0
    assert values[110:].sum() == 0


def test_abandoning_an_update_that_touched_the_sum_voids_the_round() -> None:
    total = StreamingSum(torch.zeros(D))
    total.add_values("done", 0, np.ones(D, np.float32), 1.0, _scratch())
    total.commit_update("done", 1.0)
    total.add_values("half", 0, np.ones(10, np.float32), 1.0, _scratch())

    assert total.voids_on_abandon
    assert total.abandon("done") is False  # committed: nothing to take back
    assert total.abandon("never-seen") is False
    assert total.abandon("half") is True
    assert total.abandon("never-seen") is True  # the round stays void


def test_a_refused_chunk_touches_nothing_and_does_not_void_the_round() -> None:
    total = StreamingSum(torch.zeros(D))

    with pytest.raises(InvalidUpdateError, match="outside"):
        total.add_values("bad", D - 5, np.ones(10, np.float32), 1.0, _scratch())

    assert total.abandon("bad") is False
    assert torch.count_nonzero(total.sum_tensor()) == 0


def test_one_update_cannot_add_more_than_a_model_of_coordinates() -> None:
    total = StreamingSum(torch.zeros(D))
    total.add_values("greedy", 0, np.ones(D, np.float32), 1.0, _scratch())

    with pytest.raises(TooLargeError, match="more than the model"):
        total.add_values("greedy", 0, np.ones(1, np.float32), 1.0, _scratch())

    assert float(total.sum_tensor().sum()) == D  # the refused chunk added nothing


def test_discard_is_idempotent_and_ends_the_sum() -> None:
    total = StreamingSum(torch.zeros(D))
    total.discard()
    total.discard()

    with pytest.raises(WrongRoundError):
        total.held()
    with pytest.raises(WrongRoundError):
        total.add_values("a", 0, np.ones(3, np.float32), 1.0, _scratch())


def test_weighted_mean_of_nothing_is_a_wrong_round() -> None:
    total = StreamingSum(torch.zeros(D))

    with pytest.raises(WrongRoundError, match="nothing to combine"):
        WeightedMean().aggregate(total.held(), torch.empty(D))


def test_a_committed_update_cannot_add_or_commit_again() -> None:
    total = StreamingSum(torch.zeros(D))
    total.add_values("a", 0, np.ones(D, np.float32), 1.0, _scratch())
    total.commit_update("a", 1.0)

    with pytest.raises(WrongRoundError, match="already committed"):
        total.add_values("a", 0, np.ones(1, np.float32), 1.0, _scratch())
    with pytest.raises(WrongRoundError, match="already committed"):
        total.commit_update("a", 1.0)
    with pytest.raises(InvalidUpdateError, match="without values"):
        total.commit_update("b", 1.0)
    assert total.count == 1
    assert float(total.sum_tensor().sum()) == D
