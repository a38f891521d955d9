"""StreamingSum: chunk-wise weighted sums against numpy, no copies, rejections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgrpc.aggregate import StreamingSum
from fedgrpc.errors import ConfigError, InvalidUpdateError, WrongRoundError

D = 1000


def _stream(total: StreamingSum, update: np.ndarray, weight: float, chunk: int) -> None:
    scratch = np.empty(chunk, dtype=np.float32)
    order = list(range(0, D, chunk))
    for start in reversed(order):  # arrival order must not matter
        total.add_chunk(start, update[start : start + chunk], weight, scratch)
    total.commit(weight)


def test_weighted_mean_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    updates = [rng.standard_normal(D).astype(np.float32) for _ in range(3)]
    weights = [1.0, 4.0, 16.0]
    buffer = torch.zeros(D)
    total = StreamingSum(buffer)
    for update, weight, chunk in zip(updates, weights, (7, 100, D), strict=True):
        _stream(total, update, weight, chunk)
    assert total.count == 3
    assert total.total_weight == 21.0
    mean = total.mean()
    assert mean.data_ptr() == buffer.data_ptr()  # computed in place, handed over
    expected = sum(
        w * u.astype(np.float64) for u, w in zip(updates, weights, strict=True)
    )
    np.testing.assert_allclose(mean.numpy(), expected / 21.0, rtol=1e-5, atol=1e-6)
    with pytest.raises(WrongRoundError, match="already handed over"):
        total.add_chunk(0, updates[0][:10], 1.0, np.empty(10, np.float32))


def test_release_returns_the_buffer_without_a_mean() -> None:
    buffer = torch.zeros(D)
    total = StreamingSum(buffer)
    total.add_chunk(0, np.ones(10, np.float32), 1.0, np.empty(10, np.float32))
    assert total.release() is buffer
    with pytest.raises(WrongRoundError):
        total.mean()


def test_rejections() -> None:
    with pytest.raises(ConfigError):
        StreamingSum(torch.zeros(3, dtype=torch.float64))
    total = StreamingSum(torch.zeros(D))
    scratch = np.empty(10, np.float32)
    with pytest.raises(InvalidUpdateError, match="outside"):
        total.add_chunk(D - 5, np.ones(10, np.float32), 1.0, scratch)
    with pytest.raises(InvalidUpdateError, match="float32"):
        total.add_chunk(0, np.ones(10), 1.0, scratch)
    with pytest.raises(InvalidUpdateError, match="weight"):
        total.commit(0.0)
    with pytest.raises(WrongRoundError, match="no update"):
        total.mean()
