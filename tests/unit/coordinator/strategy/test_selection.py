"""`all` and `random` selection: reproducible from the round nonce, fair over many."""

from __future__ import annotations

import hashlib
import random

import pytest

from fedgrpc.coordinator.strategy import (
    AllSelector,
    Candidate,
    RandomSelector,
    build_selector,
    nonce_uniforms,
)
from fedgrpc.errors import ConfigError

NONCE = bytes(range(32))


def _candidates(n: int) -> list[Candidate]:
    return [Candidate(f"c{i:02d}") for i in range(n)]


def test_nonce_draws_follow_the_documented_sha256_derivation() -> None:
    ids = ["c00", "c01", "ünïcode"]
    prefix = b"fedgrpc-select-v1" + (32).to_bytes(4, "big") + NONCE
    expected = [
        (
            (
                int.from_bytes(hashlib.sha256(prefix + i.encode()).digest()[:8], "big")
                >> 11
            )
            + 0.5
        )
        / 2.0**53
        for i in ids
    ]

    assert nonce_uniforms(NONCE, ids).tolist() == expected
    assert nonce_uniforms(NONCE, ["c00", "c01"]).tolist() == [
        0.6635139845896463,
        0.28120828650837754,
    ]


def test_random_choice_is_pinned_for_a_fixed_nonce_on_any_machine() -> None:
    assert RandomSelector(3).select(_candidates(10), NONCE) == ("c01", "c06", "c08")


def test_the_same_nonce_and_candidates_give_the_same_choice_in_any_order() -> None:
    candidates = _candidates(12)
    shuffled = candidates[:]
    random.Random(5).shuffle(shuffled)
    selector = RandomSelector(4)

    first = selector.select(candidates, b"round-nonce")

    assert selector.select(shuffled, b"round-nonce") == first
    assert first == tuple(sorted(first))
    assert len(first) == 4


def test_different_nonces_choose_differently() -> None:
    selector = RandomSelector(3)
    choices = {selector.select(_candidates(12), bytes([i]) * 32) for i in range(20)}

    assert len(choices) > 10


def test_more_slots_than_candidates_takes_everyone() -> None:
    assert RandomSelector(5).select(_candidates(3), NONCE) == ("c00", "c01", "c02")
    assert RandomSelector(3).select([], NONCE) == ()


@pytest.mark.parametrize("k", [0, -1])
def test_zero_or_negative_clients_per_round_is_refused(k: int) -> None:
    with pytest.raises(ConfigError, match="clients_per_round"):
        RandomSelector(k)
    with pytest.raises(ConfigError, match="clients_per_round"):
        build_selector("random", k)


def test_every_client_is_chosen_about_k_over_n_of_the_rounds() -> None:
    n, k, rounds = 10, 3, 2000
    candidates = _candidates(n)
    counts = dict.fromkeys((c.client_id for c in candidates), 0)
    selector = RandomSelector(k)

    for i in range(rounds):  # bounded: 2,000 draws
        for client_id in selector.select(candidates, i.to_bytes(8, "big")):
            counts[client_id] += 1

    # Binomial(2000, 0.3): sd ≈ 20.5, so ±100 is a ~5 sd band.
    assert all(abs(c - rounds * k / n) < 100 for c in counts.values()), counts


def test_all_takes_every_candidate_sorted() -> None:
    candidates = list(reversed(_candidates(4)))

    assert AllSelector().select(candidates, NONCE) == ("c00", "c01", "c02", "c03")
    assert build_selector("all", None).name == "all"


def test_duplicate_candidate_ids_are_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="share a client id"):
        RandomSelector(1).select([Candidate("a"), Candidate("a")], NONCE)


def test_build_selector_knows_every_built_in_and_refuses_others() -> None:
    names = [build_selector(name, 2).name for name in ("random", "loss", "throughput")]

    assert names == ["random", "loss", "throughput"]
    with pytest.raises(ConfigError, match="needs clients_per_round"):
        build_selector("loss", None)
    with pytest.raises(ConfigError, match="selection='fastest'"):
        build_selector("fastest", 2)  # type: ignore[arg-type]
