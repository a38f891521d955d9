"""The planner's "chunk_norm" rule, without gRPC: tails built as unmasking returns them.

A real round engine under `SharedIndexPlanner` (as test_secure_index.py).
d = 1000, density 0.05: k = 50, epsilon 0.2 (10 random); chunks of 10: a
tail of 100 values after the 50.
"""

from __future__ import annotations

import numpy as np

from fedgrpc.compress.chunk_norms import choose_chunk_set
from fedgrpc.coordinator.rounds.records import OpenRound
from fedgrpc.coordinator.secure.index_planner import SharedIndexPlanner
from fedgrpc.secagg import AggregateResult
from fedgrpc.wire.secagg import SecureRoundSetup
from tests.helpers.index_planner import IDS, announce, planner_engine
from tests.helpers.index_planner import positions_when_ready as _positions

D, K, CHUNK, TAIL = 1_000, 50, 10, 100
QMAX = 127


def _planner(**overrides: object) -> SharedIndexPlanner:
    settings: dict[str, object] = {
        "secagg_index_rule": "chunk_norm",
        "secagg_index_chunk": CHUNK,
        **overrides,
    }
    engine = planner_engine(D, **settings)
    return SharedIndexPlanner(engine.config, engine)


def _announce(positions: np.ndarray) -> SecureRoundSetup:
    return announce(positions, positions.size, norm_chunk=CHUNK, norm_tail=TAIL)


def _recovered(values: np.ndarray, tail: np.ndarray) -> AggregateResult:
    total = np.concatenate((values, tail)).astype(np.int64)
    return AggregateResult(IDS, total.copy(), total)


async def test_the_setup_asks_for_a_norm_per_chunk_and_the_next_set_follows_them() -> (
    None
):
    # Arrange: an applied round whose tail puts mass in chunks 90 and 3.
    planner = _planner()
    assert planner.norm_tail(D) == (CHUNK, TAIL)
    first = np.arange(K, dtype=np.uint64)
    tail = np.zeros(TAIL, dtype=np.int64)
    tail[[90, 3, 50]] = [300, 200, 5]
    verdict = planner.judge(
        OpenRound(1, 0, 0.0), _announce(first), _recovered(np.ones(K), tail)
    )
    assert verdict is not None
    assert verdict.apply
    current = OpenRound(2, 1, 0.0)

    # Act
    positions = await _positions(planner, current)

    # Assert: the three chunks (30 positions), then the rest random; the values
    # of round 1 did not count as norms (its sum of 50 ones is not in the tail).
    expected = choose_chunk_set(tail, CHUNK, D, K, 0.2, current.nonce)
    np.testing.assert_array_equal(positions, expected.numpy())
    chosen = positions.astype(np.int64)
    for chunk in (90, 3, 50):
        assert np.isin(np.arange(chunk * CHUNK, (chunk + 1) * CHUNK), chosen).all()


async def test_a_hostile_tail_steers_only_which_chunks_fill_the_top_part() -> None:
    """One client's out-of-range codes: clamped, k and the random part intact."""
    # Arrange: honest tails say chunk 7; one client adds ring garbage (a huge
    # value at chunk 60, a huge negative one at chunk 7) that survives in the sum.
    honest = np.zeros(TAIL, dtype=np.int64)
    honest[7] = 3 * QMAX
    hostile = honest.copy()
    hostile[60] += 1 << 40
    hostile[7] -= 1 << 40
    planners = [_planner(), _planner()]
    for planner, tail in zip(planners, (honest, hostile), strict=True):
        result = _recovered(np.ones(K), tail)
        planner.judge(OpenRound(1, 0, 0.0), _announce(np.arange(K, dtype=np.uint64)),
                      result)  # fmt: skip
    current = OpenRound(2, 1, 0.0)

    # Act
    fair = await _positions(planners[0], current)
    steered = await _positions(planners[1], current)

    # Assert: the attacker moved the top chunk from 7 to 60, and nothing more:
    # still k positions, of which k - C outside the chunk (epsilon k random).
    assert steered.size == fair.size == K
    assert np.isin(np.arange(600, 610), steered.astype(np.int64)).all()
    # Chunk 7 is no longer the top part; its positions may still come up
    # among the 40 random ones (a third of the nonces hit at least one).
    assert not np.isin(np.arange(70, 80), steered.astype(np.int64)).all()
    clamped = np.zeros(TAIL, dtype=np.int64)
    clamped[60] = 3 * QMAX  # clamped to survivors x qmax; chunk 7 to 0
    expected = choose_chunk_set(clamped, CHUNK, D, K, 0.2, current.nonce)
    np.testing.assert_array_equal(steered, expected.numpy())
    random_fair = np.setdiff1d(fair, np.arange(70, 80, dtype=np.uint64))
    random_steered = np.setdiff1d(steered, np.arange(600, 610, dtype=np.uint64))
    assert random_fair.size == random_steered.size == K - CHUNK


async def test_a_guard_trip_forgets_the_norms_and_the_momentum_rule_has_no_tail() -> (
    None
):
    planner = _planner()
    assert _planner(secagg_index_rule="momentum").norm_tail(D) == (0, 0)
    assert _planner(secagg_density=1.0).norm_tail(D) == (0, 0)
    tail = np.zeros(TAIL, dtype=np.int64)
    tail[5] = 50
    first = _announce(np.arange(K, dtype=np.uint64))
    planner.judge(OpenRound(1, 0, 0.0), first, _recovered(np.ones(K), tail))
    planner._reset_momentum()  # what a trip does (test_secure_index trips one)
    current = OpenRound(2, 1, 0.0)

    positions = await _positions(planner, current)

    empty = np.zeros(TAIL, dtype=np.int64)
    expected = choose_chunk_set(empty, CHUNK, D, K, 0.2, current.nonce)
    np.testing.assert_array_equal(positions, expected.numpy())  # all random
