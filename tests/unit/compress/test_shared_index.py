"""The shared index set: size, determinism, disjoint parts, wire form, bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgrpc.compress import ErrorFeedback, SparseValues
from fedgrpc.compress.shared_index import (
    choose_index_set,
    decode_index_set,
    encode_index_set,
    return_unsent,
    shared_index_k,
    take_shared_values,
)
from fedgrpc.errors import ConfigError, InvalidUpdateError
from fedgrpc.secagg import FixedPointScale

D = 10_000
SEED = b"round-7"


def _momentum(d: int = D, seed: int = 0) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def _is_sorted_unique(positions: torch.Tensor, d: int) -> bool:
    in_range = bool((positions >= 0).all() and (positions < d).all())
    return in_range and bool((positions.diff() > 0).all())


@settings(max_examples=60, deadline=None)
@given(
    d=st.integers(1, 3000),
    density=st.floats(0.0, 1.5),
    epsilon=st.floats(0.0, 1.0),
    zeros=st.booleans(),
)
def test_exactly_k_sorted_unique_positions(
    d: int, density: float, epsilon: float, zeros: bool
) -> None:
    momentum = torch.zeros(d) if zeros else _momentum(d)
    k = int(density * d)

    positions = choose_index_set(momentum, k, epsilon, SEED)

    assert positions.dtype == torch.int64
    assert positions.numel() == min(k, d)
    assert _is_sorted_unique(positions, d)


def test_same_inputs_same_set_and_another_seed_moves_only_the_random_part() -> None:
    momentum, k = _momentum(), 1_000

    first = choose_index_set(momentum, k, 0.1, SEED)
    again = choose_index_set(momentum.clone(), k, 0.1, SEED)
    other = choose_index_set(momentum, k, 0.1, b"round-8")

    assert torch.equal(first, again)
    top = set(torch.topk(momentum.abs(), 900).indices.tolist())
    assert top <= set(first.tolist())
    assert top <= set(other.tolist())
    assert set(first.tolist()) != set(other.tolist())


def test_random_part_is_disjoint_from_the_top_part_and_fills_k() -> None:
    momentum, k = _momentum(), 2_000
    top = set(torch.topk(momentum.abs(), 1_000).indices.tolist())

    chosen = set(choose_index_set(momentum, k, 0.5, SEED).tolist())

    assert top <= chosen
    assert len(chosen - top) == 1_000


def test_all_zero_momentum_falls_back_to_seeded_random_positions() -> None:
    first = choose_index_set(torch.zeros(D), 500, 0.1, SEED)
    other = choose_index_set(torch.zeros(D), 500, 0.1, b"another round")

    assert first.numel() == 500
    # Not the lowest positions (what a tie-broken top-k of zeros would give).
    assert not torch.equal(first, torch.arange(500))
    assert not torch.equal(first, other)


def test_sparse_momentum_gives_its_support_and_random_rest() -> None:
    momentum = torch.zeros(D)
    momentum[[5, 50, 500]] = torch.tensor([1.0, -2.0, 3.0])

    chosen = choose_index_set(momentum, 100, 0.1, SEED)

    assert {5, 50, 500} <= set(chosen.tolist())
    assert chosen.numel() == 100


def test_ties_at_the_threshold_go_to_the_lowest_positions() -> None:
    momentum = torch.ones(D)

    chosen = choose_index_set(momentum, 10, 0.0, SEED)

    assert torch.equal(chosen, torch.arange(10))


def test_k_at_least_d_is_every_position_and_zero_is_none() -> None:
    assert torch.equal(choose_index_set(_momentum(), D + 5, 0.1, SEED), torch.arange(D))
    assert choose_index_set(_momentum(), 0, 0.1, SEED).numel() == 0


@pytest.mark.parametrize(
    ("k", "epsilon", "momentum", "error"),
    [
        (-1, 0.1, torch.zeros(8), ConfigError),
        (4, 1.5, torch.zeros(8), ConfigError),
        (4, 0.1, torch.zeros(8, dtype=torch.float64), InvalidUpdateError),
        (4, 0.1, torch.zeros(2, 4), InvalidUpdateError),
        (4, 0.1, torch.tensor([1.0, float("nan"), 0.0]), InvalidUpdateError),
    ],
)
def test_bad_arguments_are_refused(
    k: int, epsilon: float, momentum: torch.Tensor, error: type[Exception]
) -> None:
    with pytest.raises(error):
        choose_index_set(momentum, k, epsilon, SEED)


def test_k_from_density_matches_topk_rounding() -> None:
    assert shared_index_k(0.07, 100) == 7
    assert shared_index_k(0.1, 136_000) == 13_600
    assert shared_index_k(1.0, 5) == 5
    with pytest.raises(ConfigError):
        shared_index_k(0.0, 5)


def test_announcement_round_trips_and_refuses_a_short_count() -> None:
    positions = choose_index_set(_momentum(), 1_000, 0.1, SEED)

    data = encode_index_set(positions)

    assert torch.equal(decode_index_set(data, 1_000, D), positions)
    assert len(data) < 1_000 * 8 // 4  # well under 2 bytes per position
    with pytest.raises(InvalidUpdateError):
        decode_index_set(data, 999, D)


def test_take_leaves_everything_else_in_the_residual_exactly() -> None:
    residual = _momentum(seed=3)
    before = residual.clone()
    positions = choose_index_set(_momentum(), 1_000, 0.1, SEED)

    taken = take_shared_values(residual, positions)

    rebuilt = residual.clone()
    rebuilt[positions] += taken
    assert torch.equal(rebuilt, before)  # bit-exact: taken + kept == input
    assert torch.equal(taken, before[positions])
    assert int(torch.count_nonzero(residual[positions])) == 0


def test_clip_and_rounding_error_return_to_the_residual() -> None:
    residual = _momentum(seed=3) * 0.1
    before = residual.double()
    positions = choose_index_set(_momentum(), 1_000, 0.1, SEED)
    scale = FixedPointScale(clip=0.05)  # clips a good share of N(0, 0.1)

    taken = take_shared_values(residual, positions)
    codes = scale.quantise(taken.numpy(), np.random.default_rng(0))
    sent = torch.from_numpy(scale.dequantise(codes.codes))
    return_unsent(residual, positions, taken, sent)

    assert codes.clipped > 0
    total = residual.double()
    total[positions] += sent.double()
    torch.testing.assert_close(total, before, rtol=0, atol=1e-7)


def test_error_feedback_route_matches_take_and_return() -> None:
    delta = (_momentum(seed=4) * 0.1).numpy()
    positions = choose_index_set(_momentum(), 1_000, 0.1, SEED)
    pos = positions.numpy()
    scale = FixedPointScale(clip=0.05)
    feedback = ErrorFeedback(D)
    feedback.accumulate(delta)
    residual = torch.from_numpy(delta.copy())

    codes = scale.quantise(feedback.residual[pos], np.random.default_rng(0))
    sent = scale.dequantise(codes.codes)
    feedback.subtract(0, SparseValues(pos, sent))
    taken = take_shared_values(residual, positions)
    return_unsent(residual, positions, taken, torch.from_numpy(sent))

    np.testing.assert_allclose(feedback.residual, residual.numpy(), rtol=0, atol=1e-7)
