"""The planner's "residual_age" rule, without gRPC: sums as unmasking returns them.

A real round engine under `SharedIndexPlanner` (as test_secure_index.py).
d = 1000, density 0.05: k = 50, epsilon 0.2 (10 random). The setups'
fixed-point scale is 0.5 per code, 3 survivors: mean = codes x 0.5 / 3.
"""

from __future__ import annotations

import numpy as np
import torch

from fedgrpc.compress.residual_age import ResidualAge
from fedgrpc.compress.shared_index import choose_index_set
from fedgrpc.coordinator.rounds.records import OpenRound
from fedgrpc.coordinator.secure.index_planner import SharedIndexPlanner
from fedgrpc.secagg import AggregateResult
from tests.helpers.index_planner import IDS, announce, planner_engine
from tests.helpers.index_planner import positions_when_ready as _positions

D, K = 1_000, 50
STEP = 0.5 / len(IDS)


def _planner(**overrides: object) -> SharedIndexPlanner:
    engine = planner_engine(D, secagg_index_rule="residual_age", **overrides)
    return SharedIndexPlanner(engine.config, engine)


def _recovered(codes: np.ndarray) -> AggregateResult:
    total = codes.astype(np.int64)
    return AggregateResult(IDS, total.copy(), total)


async def test_the_next_set_ranks_by_rate_times_rounds_waited() -> None:
    # Arrange: round 1 sent positions 0..49; codes 1..50, so position 49 is
    # the loudest and positions 0..24 are quieter than the median (25.5 codes).
    planner = _planner()
    first = np.arange(K, dtype=np.uint64)
    codes = np.arange(1, K + 1)
    verdict = planner.judge(OpenRound(1, 0, 0.0), announce(first, K), _recovered(codes))
    assert verdict is not None
    assert verdict.apply
    current = OpenRound(2, 1, 0.0)

    # Act
    positions = await _positions(planner, current)

    # Assert: exactly the choice from the estimate kept from round 1's mean.
    expected_age = ResidualAge(D)
    mean = torch.from_numpy(codes.astype(np.float32)) * STEP
    expected_age.record(torch.from_numpy(first.astype(np.int64)), mean)
    expected = choose_index_set(expected_age.scores(), K, 0.2, current.nonce)
    np.testing.assert_array_equal(positions, expected.numpy())
    # It rotates: coordinates never sent score the median rate x 2 rounds, so
    # they outrank every sent one below twice the median; positions sent in
    # round 1 fill the top part only where their own rate is above that.
    chosen = positions.astype(np.int64)
    resent = chosen[chosen < K]
    assert resent.size < K // 2
    # The 40 top positions: twice the median (torch's lower one: 25 codes)
    # is 50 codes, which only position 49 reaches; it ties with the unsent
    # ones, and ties go lowest position first: 49, then 50..88.
    assert resent.size <= 1 + (K - 40)  # 49, and what the random part drew
    assert np.isin(np.arange(K - 1, K + 39), chosen).all()


async def test_a_dense_round_is_recorded_whole_and_a_trip_forgets_the_record() -> None:
    planner = _planner()
    codes = np.zeros(D, dtype=np.int64)
    codes[[7, 900, 5, 6]] = [6, 5, 1, -1]  # dense: every coordinate, 4 moved
    planner.judge(OpenRound(1, 0, 0.0), announce(None, D), _recovered(codes))
    current = OpenRound(2, 1, 0.0)

    after_dense = await _positions(planner, current)
    planner._reset_momentum()  # what a trip does (test_secure_index trips one)
    third = OpenRound(3, 2, 0.0)
    after_trip = await _positions(planner, third)

    # Only 4 coordinates have a known rate (zero arrivals teach nothing); the
    # unknown ones take the median (coordinate 5's), so 7 and 900 head the set.
    assert {7, 900} <= set(after_dense.astype(np.int64).tolist())
    expected = choose_index_set(torch.zeros(D), K, 0.2, third.nonce)
    np.testing.assert_array_equal(after_trip, expected.numpy())  # all random
