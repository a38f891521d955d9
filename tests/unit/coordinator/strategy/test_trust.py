"""Trust scores and quarantine: the state machine on fixed numbers, and its pass."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedgrpc.aggregate.agreement import Agreement
from fedgrpc.config.robustness import TrustSettings
from fedgrpc.coordinator.rounds.registry import ClientRecord, ClientRegistry
from fedgrpc.coordinator.strategy.trust import (
    MIN_SCORED_UPDATES,
    TrustBook,
    round_scores,
)

HONEST = ("c00001", "c00002", "c00003")
ATTACKER = "c00004"
ORDER = (*HONEST, ATTACKER)


def _registry() -> ClientRegistry:
    registry = ClientRegistry(max_clients=16)
    for name in ORDER:
        assert registry.add(name, 0.0).client_id == name
    return registry


def _record(registry: ClientRegistry, client_id: str) -> ClientRecord:
    record = registry.get(client_id)
    assert record is not None
    return record


def _agreement(cosine: list[float], distance: list[float]) -> Agreement:
    c, d = np.array(cosine), np.array(distance)
    return Agreement(
        cosine=c, distance=d, peer_cosine=c, closest_peer_cosine=c, norm=np.ones_like(d)
    )


FLIPPED = _agreement([0.9, 0.8, 0.85, -0.9], [1.0, 1.2, 0.9, 3.0])
"""Three honest updates in line with the aggregate, the fourth sign-flipped."""


def _close(book: TrustBook, registry: ClientRegistry, round_id: int) -> None:
    book.observe(round_id, ORDER, FLIPPED)
    book.round_closed(round_id, registry)


def test_round_score_gives_full_credit_in_line_and_none_to_a_flipped_update() -> None:
    scores = round_scores(FLIPPED.peer_cosine, FLIPPED.distance)
    np.testing.assert_allclose(scores, [1.0, 1.0, 1.0, 0.0])


def test_round_score_of_two_copies_is_zero_for_both_and_honest_ones_keep_it() -> None:
    # In line with the others by direction and distance, but two send one vector.
    direction, distance = np.full(5, 0.5), np.ones(5)
    closest = np.array([0.62, 0.58, 0.99999, 0.99999, 0.9998])
    scores = round_scores(direction, distance, closest)
    np.testing.assert_allclose(scores, [1.0, 1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(round_scores(direction, distance), np.ones(5))


def test_round_score_of_a_scaled_update_is_the_squared_tolerance_ratio() -> None:
    # median distance 1.0; the 4th is 10x as far: D = (2 x 1 / 10)^2 = 0.04
    scores = round_scores(np.array([0.9, 0.9, 0.9, 0.9]), np.array([1, 1, 1, 10.0]))
    np.testing.assert_allclose(scores, [1.0, 1.0, 1.0, 0.04])


def test_round_score_ignores_direction_when_the_round_has_no_consensus() -> None:
    scores = round_scores(np.array([-0.2, 0.1, -0.1]), np.array([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(scores, [1.0, 1.0, 1.0])


def test_a_direction_at_a_quarter_of_the_median_cosine_earns_half_credit() -> None:
    # median cos 0.8, full credit from 0.4; 0.2 / 0.4 = 0.5
    scores = round_scores(np.array([0.8, 0.8, 0.2]), np.array([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(scores, [1.0, 1.0, 0.5])


def test_a_client_that_always_disagrees_goes_soft_then_hard_in_four_rounds() -> None:
    registry, book = _registry(), TrustBook(TrustSettings())
    attacker = registry.get(ATTACKER)
    assert attacker is not None
    expected = [(0.6, "trusted"), (0.36, "soft"), (0.216, "soft")]
    for round_id, (score, state) in enumerate(expected, start=1):
        _close(book, registry, round_id)
        standing = book.standing(ATTACKER)
        assert standing.score == pytest.approx(score)
        assert standing.state == state
        assert attacker.weight_factor == pytest.approx(min(1.0, score / 0.5))
        assert attacker.excluded_until_round == 0
    _close(book, registry, 4)  # 0.6 x 0.216 = 0.1296 < 0.2
    assert book.standing(ATTACKER).state == "quarantined"
    assert attacker.excluded_until_round == 4 + 1 + 5  # rounds 5..9 refused
    assert attacker.excluded_from(9)
    assert not attacker.excluded_from(10)
    assert "trust_hard_threshold" in attacker.exclusion_reason
    assert book.quarantines == 1
    for honest in HONEST:
        assert book.standing(honest).state == "trusted"
        record = registry.get(honest)
        assert record is not None
        assert record.weight_factor == 1.0
        assert record.excluded_until_round == 0


def test_a_quarantined_client_returns_on_probation_and_a_repeat_doubles_it() -> None:
    registry, book = _registry(), TrustBook(TrustSettings(quarantine_rounds=2))
    for round_id in range(1, 5):
        _close(book, registry, round_id)
    assert book.standing(ATTACKER).quarantined_until == 7  # rounds 5, 6 excluded
    honest_only = _agreement([0.9, 0.8, 0.85], [1.0, 1.2, 0.9])
    book.observe(5, HONEST, honest_only)
    book.round_closed(5, registry)
    assert book.standing(ATTACKER).state == "quarantined"
    book.observe(6, HONEST, honest_only)
    book.round_closed(6, registry)  # round 7 may take its update again
    standing = book.standing(ATTACKER)
    assert standing.state == "probation"
    assert standing.score == pytest.approx(0.35)
    assert _record(registry, ATTACKER).weight_factor == pytest.approx(0.7)
    _close(book, registry, 7)  # 0.6 x 0.35 = 0.21: still on probation
    assert book.standing(ATTACKER).state == "probation"
    _close(book, registry, 8)  # 0.126: back in, for 2 x 2 rounds
    assert book.standing(ATTACKER).state == "quarantined"
    assert book.standing(ATTACKER).quarantined_until == 8 + 1 + 4
    assert book.standing(ATTACKER).offences == 2
    # The first quarantine's round stays: how soon the attacker was caught.
    assert book.standing(ATTACKER).first_quarantined_round == 4
    assert book.standing(HONEST[0]).first_quarantined_round == 0


def test_probation_ends_as_trusted_after_k_good_rounds() -> None:
    registry, book = _registry(), TrustBook(TrustSettings(quarantine_rounds=2))
    for round_id in range(1, 5):
        _close(book, registry, round_id)
    for round_id in (5, 6):
        book.round_closed(round_id, registry)  # nothing measured: readmission only
    good = _agreement([0.9, 0.8, 0.85, 0.88], [1.0, 1.2, 0.9, 1.1])
    book.observe(7, ORDER, good)
    book.round_closed(7, registry)  # 0.6 x 0.35 + 0.4 = 0.61, one left
    assert book.standing(ATTACKER).state == "probation"
    book.observe(8, ORDER, good)
    book.round_closed(8, registry)
    assert book.standing(ATTACKER).state == "trusted"
    assert _record(registry, ATTACKER).weight_factor == 1.0


def test_a_round_with_too_few_updates_moves_no_score() -> None:
    registry, book = _registry(), TrustBook(TrustSettings())
    order = ORDER[: MIN_SCORED_UPDATES - 1]
    book.observe(1, order, _agreement([0.9, -0.9], [1.0, 1.0]))
    book.round_closed(1, registry)
    assert book.standings == {}


def test_a_measurement_of_another_round_is_not_scored() -> None:
    registry, book = _registry(), TrustBook(TrustSettings())
    book.observe(1, ORDER, FLIPPED)
    book.round_closed(2, registry)  # round 1's apply failed before it closed
    assert book.standings == {}


def test_the_state_round_trips_exactly_and_reapplies_the_quarantine() -> None:
    registry, book = _registry(), TrustBook(TrustSettings())
    for round_id in range(1, 5):
        _close(book, registry, round_id)
    state = book.state_dict()
    fresh_registry, fresh = _registry(), TrustBook(TrustSettings())
    fresh.load_state_dict(json.loads(json.dumps(state)), fresh_registry)
    assert fresh.state_dict() == state  # floats survive JSON bit for bit
    assert fresh.standing(ATTACKER) == book.standing(ATTACKER)
    attacker = fresh_registry.get(ATTACKER)
    assert attacker is not None
    assert attacker.excluded_until_round == 10
    assert "trust_hard_threshold" in attacker.exclusion_reason
    assert fresh.quarantines == 1


def test_restoring_keeps_a_longer_exclusion_set_by_something_else() -> None:
    registry, book = _registry(), TrustBook(TrustSettings())
    for round_id in range(1, 5):
        _close(book, registry, round_id)
    fresh_registry = _registry()
    attacker = fresh_registry.get(ATTACKER)
    assert attacker is not None
    attacker.excluded_until_round, attacker.exclusion_reason = 50, "broke uploads"
    TrustBook(TrustSettings()).load_state_dict(book.state_dict(), fresh_registry)
    assert (attacker.excluded_until_round, attacker.exclusion_reason) == (
        50,
        "broke uploads",
    )
