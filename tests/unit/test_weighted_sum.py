"""WeightedSum: weighted mean against numpy, the no-copy paths, rejections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgrpc.aggregate import WeightedSum
from fedgrpc.errors import ConfigError, InvalidUpdateError, WrongRoundError

D = 1_000


def _updates(n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(D, generator=gen) for _ in range(n)]


@pytest.mark.parametrize("consume", [False, True])
def test_weighted_mean_matches_numpy(consume: bool) -> None:
    # Arrange
    updates = _updates(4)
    weights = [3.0, 1.0, 0.5, 10.0]
    stacked = np.stack([u.numpy() for u in updates]).astype(np.float64)
    expected = np.average(stacked, axis=0, weights=weights)
    acc = WeightedSum(D)

    # Act
    for u, w in zip(updates, weights, strict=True):
        acc.add(u.clone(), w, consume=consume)
    count, total = acc.count, acc.total_weight
    mean = acc.mean()

    # Assert
    assert (count, total) == (4, 14.5)
    np.testing.assert_allclose(mean.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_consume_takes_over_first_update_without_allocating() -> None:
    first, second = _updates(2)
    first_ptr = first.data_ptr()
    acc = WeightedSum(D)

    acc.add(first, 2.0, consume=True)
    acc.add(second, 1.0, consume=True)
    mean = acc.mean()

    assert mean.data_ptr() == first_ptr


def test_without_consume_the_update_is_left_untouched() -> None:
    (update,) = _updates(1)
    before = update.clone()
    acc = WeightedSum(D)

    acc.add(update, 2.0)
    mean = acc.mean()

    assert torch.equal(update, before)
    assert mean.data_ptr() != update.data_ptr()


def test_mean_spends_the_sum_until_reset() -> None:
    acc = WeightedSum(D)
    acc.add(torch.ones(D), 1.0)
    acc.mean()

    with pytest.raises(WrongRoundError, match="spent"):
        acc.add(torch.ones(D), 1.0)
    with pytest.raises(WrongRoundError, match="spent"):
        acc.mean()

    acc.reset()
    acc.add(torch.full((D,), 2.0), 1.0)
    assert (acc.count, acc.total_weight) == (1, 1.0)
    assert torch.equal(acc.mean(), torch.full((D,), 2.0))


def test_mean_of_nothing_is_wrong_round() -> None:
    with pytest.raises(WrongRoundError, match="zero updates"):
        WeightedSum(D).mean()


@pytest.mark.parametrize(
    ("update", "weight", "match"),
    [
        (torch.ones(D + 1), 1.0, "coordinates"),
        (torch.ones(D, 1), 1.0, "1-D float32"),
        (torch.ones(D, dtype=torch.float64), 1.0, "1-D float32"),
        (torch.ones(D, dtype=torch.bfloat16), 1.0, "1-D float32"),
        (torch.ones(D), 0.0, "weight"),
        (torch.ones(D), -2.0, "weight"),
        (torch.ones(D), float("inf"), "weight"),
        (torch.full((D,), float("nan")), 1.0, "NaN"),
        (torch.full((D,), float("-inf")), 1.0, "NaN"),
    ],
)
def test_bad_update_is_rejected_and_sum_is_unchanged(
    update: torch.Tensor, weight: float, match: str
) -> None:
    acc = WeightedSum(D)
    acc.add(torch.ones(D), 1.0)

    with pytest.raises(InvalidUpdateError, match=match):
        acc.add(update, weight, consume=True)

    assert (acc.count, acc.total_weight) == (1, 1.0)
    assert torch.equal(acc.mean(), torch.ones(D))


def test_zero_coordinates_is_config_error() -> None:
    with pytest.raises(ConfigError, match="num_coordinates"):
        WeightedSum(0)
