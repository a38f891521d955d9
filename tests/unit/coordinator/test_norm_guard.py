"""`rounds.norm_guard`: the plain rounds' guard cannot be steered for long."""

from __future__ import annotations

import math

from fedgrpc.coordinator.rounds.norm_guard import GUARD_WINDOW_ROUNDS, NormGuard


def _poisoned(floor: float = 0.0) -> NormGuard:
    guard = NormGuard(growth=10.0, floor_ratio=floor)
    for round_id in range(1, 7):
        assert guard.judge(round_id, 1e-11, model_norm=lambda: 1.0) is None
    return guard


def test_a_norm_over_growth_times_the_median_trips_after_three_rounds() -> None:
    guard = NormGuard(growth=10.0, floor_ratio=0.0)
    for round_id in (1, 2, 3):
        assert guard.judge(round_id, 1.0, model_norm=lambda: 100.0) is None
    reason = guard.judge(4, 10.5, model_norm=lambda: 100.0)
    assert reason is not None
    assert "over 10x the recent median 1" in reason
    assert guard.judge(5, 9.5, model_norm=lambda: 100.0) is None
    assert guard.trips == 1


def test_a_non_finite_norm_always_trips_even_when_disabled() -> None:
    guard = NormGuard(growth=0.0, floor_ratio=0.0)
    assert guard.judge(1, math.nan, model_norm=lambda: 1.0) is not None
    assert guard.judge(2, 1e30, model_norm=lambda: 1.0) is None


def test_the_floor_keeps_a_zeroed_median_from_refusing_small_moves() -> None:
    guard = _poisoned(floor=0.001)
    assert guard.judge(7, 0.009, model_norm=lambda: 1.0) is None  # < 10 x 0.001 x 1
    reason = guard.judge(8, 0.011, model_norm=lambda: 1.0)
    assert reason is not None
    assert "floored at guard_norm_floor" in reason


def test_tripped_rounds_age_the_history_until_the_poison_expires() -> None:
    guard = _poisoned()
    tripped = [r for r in range(7, 20) if guard.judge(r, 1.0, model_norm=lambda: 1.0)]
    # Norms of rounds 1-6 expire at rounds 9-14; with 2 left (round 12) it warms up.
    assert tripped == [7, 8, 9, 10, 11]
    assert [r for r, _ in guard.history] == list(range(12, 20))[-GUARD_WINDOW_ROUNDS:]


def test_reset_forgets_the_history_and_the_next_round_passes() -> None:
    guard = _poisoned()
    assert guard.judge(7, 1.0, model_norm=lambda: 1.0) is not None
    assert guard.reset() == 6
    assert guard.history == []
    assert guard.judge(8, 1.0, model_norm=lambda: 1.0) is None


def test_restore_keeps_the_round_ids_so_restored_norms_keep_aging() -> None:
    guard = _poisoned()
    restored = NormGuard(growth=10.0, floor_ratio=0.0)
    restored.restore(guard.history)
    assert restored.history == guard.history
    assert restored.judge(12, 1.0, model_norm=lambda: 1.0) is None  # only 5 and 6 left


def test_the_weights_norm_is_read_only_for_a_round_over_the_unfloored_limit() -> None:
    reads: list[int] = []

    def model_norm() -> float:
        reads.append(1)
        return 1.0

    guard = NormGuard(growth=10.0, floor_ratio=0.001)
    for round_id in range(1, 6):
        assert guard.judge(round_id, 1.0, model_norm) is None
    assert reads == []  # a model-sized read saved in every ordinary round
    assert guard.judge(6, 11.0, model_norm) is not None
    assert reads == [1]
