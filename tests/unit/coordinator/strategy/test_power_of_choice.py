"""`loss` selection (power-of-choice, Cho et al. 2020) and its bounds on liars."""

from __future__ import annotations

import pytest

from fedgrpc.coordinator.strategy import Candidate, LossSelector
from fedgrpc.errors import ConfigError

ROUNDS = 1000  # bounded loops over nonces


def _nonce(i: int) -> bytes:
    return i.to_bytes(8, "big")


def test_with_the_whole_population_as_candidates_the_highest_losses_win() -> None:
    candidates = [Candidate(f"c{i}", 100, last_loss=float(i)) for i in range(6)]
    selector = LossSelector(2, candidate_set_size=6)

    assert selector.select(candidates, b"n") == ("c4", "c5")


def test_newcomers_rank_first_and_broken_losses_rank_last() -> None:
    candidates = [
        Candidate("new", 100, last_loss=None),
        Candidate("high", 100, last_loss=5.0),
        Candidate("low", 100, last_loss=1.0),
        Candidate("nan", 100, last_loss=float("nan")),
        Candidate("inf", 100, last_loss=float("inf")),
    ]
    selector = LossSelector(3, candidate_set_size=5)

    assert selector.select(candidates, b"n") == ("high", "low", "new")


def test_the_choice_is_reproducible_from_the_nonce() -> None:
    candidates = [Candidate(f"c{i}", 10 * (i + 1), last_loss=1.0) for i in range(10)]
    selector = LossSelector(2)

    picks = [selector.select(candidates, _nonce(i)) for i in range(5)]

    assert picks == [
        selector.select(list(reversed(candidates)), _nonce(i)) for i in range(5)
    ]
    assert len(set(picks)) > 1


def test_candidate_sets_favour_clients_with_more_data() -> None:
    # c0 has 3x the samples of each other client (within the 4x cap).
    candidates = [Candidate("c0", 300)] + [
        Candidate(f"c{i}", 100) for i in range(1, 10)
    ]
    selector = LossSelector(1, candidate_set_size=1, max_sample_ratio=4.0)

    hits = sum(selector.select(candidates, _nonce(i)) == ("c0",) for i in range(ROUNDS))

    # P = 300 / 1200 = 0.25; Binomial(1000, 0.25) has sd ≈ 13.7.
    assert 180 < hits < 320


def test_a_liar_about_loss_and_samples_is_chosen_a_bounded_share_of_rounds() -> None:
    honest = [Candidate(f"c{i:02d}", 100, last_loss=1.0) for i in range(19)]
    liar = Candidate("liar", 10**12, last_loss=1e30)
    selector = LossSelector(2, candidate_set_size=4, max_sample_ratio=2.0)

    picked = sum(
        "liar" in selector.select([*honest, liar], _nonce(i)) for i in range(ROUNDS)
    )

    # Weight capped at 2 x median: P(in A) = 1 - (19/21)(18/20)(17/19)(16/18) ≈ 0.35.
    assert picked / ROUNDS < 0.42
    assert picked / ROUNDS > 0.25  # it still is in A often, and then wins
    uncapped = LossSelector(2, candidate_set_size=4, max_sample_ratio=1e15)
    assert all("liar" in uncapped.select([*honest, liar], _nonce(i)) for i in range(50))


def test_a_liar_reporting_infinite_loss_ranks_last() -> None:
    candidates = [Candidate(f"c{i}", 100, last_loss=1.0) for i in range(4)]
    candidates.append(Candidate("liar", 100, last_loss=float("inf")))
    selector = LossSelector(2, candidate_set_size=5)

    assert all("liar" not in selector.select(candidates, _nonce(i)) for i in range(50))


def test_zero_or_negative_sample_counts_still_get_a_chance() -> None:
    candidates = [Candidate("zero", 0), Candidate("neg", -5), Candidate("big", 100)]
    selector = LossSelector(1, candidate_set_size=1)

    weights = selector.sampling_weights(candidates)

    assert weights.tolist() == [1.0, 1.0, 2.0]  # floor 1, cap 2 x median (1)


@pytest.mark.parametrize(
    ("k", "d", "ratio", "field"),
    [
        (0, None, 2.0, "clients_per_round"),
        (3, 2, 2.0, "selection_candidates"),
        (2, 4, 0.5, "max_sample_ratio"),
        (2, 4, float("inf"), "max_sample_ratio"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(
    k: int, d: int | None, ratio: float, field: str
) -> None:
    with pytest.raises(ConfigError, match=field):
        LossSelector(k, d, ratio)


def test_too_few_candidates_takes_everyone() -> None:
    candidates = [Candidate("a", 1), Candidate("b", 1)]

    assert LossSelector(3).select(candidates, b"n") == ("a", "b")
