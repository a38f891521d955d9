"""The coordinator's shared index set and divergence guard, without gRPC.

A real round engine (seeded model, real outer optimizer) under
`SharedIndexPlanner`; recovered sums are built by hand, as unmasking
would return them.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from fedgrpc.compress.shared_index import choose_index_set
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.records import OpenRound
from fedgrpc.coordinator.secure.index_planner import SharedIndexPlanner
from fedgrpc.secagg import AggregateResult
from fedgrpc.wire.secagg import SecureRoundSetup
from tests.helpers.index_planner import IDS, announce, planner_engine
from tests.helpers.index_planner import positions_when_ready as _positions

D = 1_000


def _engine(d: int = D, **overrides: object) -> RoundEngine:
    return planner_engine(d, **overrides)


def _announce(positions: np.ndarray | None) -> SecureRoundSetup:
    return announce(positions, D if positions is None else positions.size)


def _recovered(size: int, code: int) -> AggregateResult:
    total = np.full(size, code, dtype=np.int64)
    return AggregateResult(IDS, total.copy(), total)


async def test_the_set_is_top_momentum_plus_seeded_random_and_the_same_for_all() -> (
    None
):
    # Arrange: two coordinators with the same momentum (nesterov after one step).
    engines = [_engine(), _engine()]
    mean = torch.linspace(-1.0, 1.0, D)
    for engine in engines:
        engine.model.step(mean.clone(), round_id=1, copy_on_write=False)
    current = OpenRound(2, 1, 0.0)
    other = OpenRound(2, 1, 0.0)  # another round: another nonce

    # Act
    first = await _positions(SharedIndexPlanner(engines[0].config, engines[0]), current)
    again = await _positions(SharedIndexPlanner(engines[1].config, engines[1]), current)
    reseeded = await _positions(
        SharedIndexPlanner(engines[0].config, engines[0]), other
    )

    # Assert: a pure function of (momentum, k, epsilon, nonce), 5 % of d.
    buffer = engines[0].model.optimizer.state_dict()["momentum_buffer"]
    assert isinstance(buffer, torch.Tensor)
    expected = choose_index_set(buffer, 50, 0.2, current.nonce).numpy()
    assert first.dtype == np.uint64
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(again, first)
    assert not np.array_equal(reseeded, first)  # the random part follows the nonce
    top = np.sort(np.argsort(-buffer.abs().numpy(), kind="stable")[:40])
    assert np.isin(top, first).all()


async def test_density_one_is_dense_and_runs_no_guard() -> None:
    engine = _engine(secagg_density=1.0)
    planner = SharedIndexPlanner(engine.config, engine)
    current = OpenRound(1, 0, 0.0)

    assert planner.ready(current)
    assert planner.positions(current) is None
    assert planner.judge(current, _announce(None), _recovered(D, 10**6)) is None


async def test_fedavg_ranks_by_the_last_applied_sum() -> None:
    # Arrange: fedavg keeps no momentum; round 1 sent 50 positions.
    engine = _engine(outer_optimizer="fedavg", outer_momentum=0.0)
    planner = SharedIndexPlanner(engine.config, engine)
    sent = np.arange(0, D, 20, dtype=np.uint64)
    total = np.arange(sent.size, dtype=np.int64) - 25
    result = AggregateResult(IDS, total.copy(), total)
    planner.judge(OpenRound(1, 0, 0.0), _announce(sent), result)
    engine.finish_close(OpenRound(1, 0, 0.0), True, "test")  # round 1 applied
    current = OpenRound(2, 1, 0.0)

    # Act
    positions = await _positions(planner, current)

    # Assert
    ranking = torch.zeros(D)
    ranking[torch.from_numpy(sent.astype(np.int64))] = torch.from_numpy(
        np.abs(total).astype(np.float32)
    )
    expected = choose_index_set(ranking, 50, 0.2, current.nonce).numpy()
    np.testing.assert_array_equal(positions, expected)


async def test_a_tripped_guard_voids_the_round_resets_state_and_goes_dense() -> None:
    # Arrange: three healthy rounds of the same norm, momentum built up.
    engine = _engine()
    planner = SharedIndexPlanner(engine.config, engine)
    engine.model.step(torch.ones(D), round_id=1, copy_on_write=False)
    positions = np.arange(50, dtype=np.uint64)
    for round_id in (1, 2, 3):
        verdict = planner.judge(
            OpenRound(round_id, 0, 0.0), _announce(positions), _recovered(50, 30)
        )
        assert verdict is not None
        assert verdict.apply
        assert not planner.take_residual_reset(OpenRound(round_id + 1, 0, 0.0))

    # Act: a burst 10x the recent norm.
    bursting = OpenRound(4, 3, 0.0)
    with capture_logs() as logs:
        verdict = planner.judge(bursting, _announce(positions), _recovered(50, 300))
        following = OpenRound(5, 3, 0.0)
        ready = planner.ready(following)
        resets = [planner.take_residual_reset(OpenRound(r, 3, 0.0)) for r in (5, 6)]

    # Assert: dropped, momentum gone, the next round dense, all of it logged.
    assert verdict is not None
    assert not verdict.apply
    assert verdict.reason == "spike"
    assert bursting.void_reason is not None
    assert "divergence guard (spike)" in bursting.void_reason
    assert "momentum_buffer" not in engine.model.optimizer.state_dict()
    assert ready
    assert planner.positions(following) is None
    assert planner.trips == 1
    assert planner.dense_fallbacks == 1
    assert resets == [True, False]  # the first setup after the trip, only
    events = {e["event"]: e for e in logs}
    assert events["secagg_residual_reset_announced"]["round"] == 5
    assert events["secagg_guard_tripped"]["reason"] == "spike"
    assert events["secagg_guard_tripped"]["round"] == 4
    assert events["secagg_dense_fallback"]["round"] == 5


async def test_a_set_too_large_for_one_setup_message_is_announced_dense() -> None:
    # Arrange: 10k random positions of 100k code to ~7 kB, over a 4 KiB chunk.
    engine = _engine(100_000, secagg_density=0.1, chunk_bytes=4096)
    planner = SharedIndexPlanner(engine.config, engine)
    current = OpenRound(1, 0, 0.0)

    # Act
    with capture_logs() as logs:
        while not planner.ready(current):  # noqa: ASYNC110 (as in _positions)
            await asyncio.sleep(0.001)
        positions = planner.positions(current)

    # Assert: judged on the coded bytes, which the warning reports.
    assert positions is None
    [event] = logs
    assert event["event"] == "secagg_index_set_too_large"
    assert event["positions"] == 10_000
    assert event["max_bytes"] == 4096
    assert 4096 < event["bytes"] < 10_000 * 8


async def test_the_size_limit_is_on_the_coded_set_not_raw_positions() -> None:
    # Arrange: 900 of 1,000 positions: 7.2 kB raw, well over a 4 KiB chunk,
    # but mostly zero gaps, which code to a few hundred bytes.
    engine = _engine(secagg_density=0.9, chunk_bytes=4096)
    planner = SharedIndexPlanner(engine.config, engine)
    current = OpenRound(1, 0, 0.0)

    # Act
    positions = await _positions(planner, current)
    coded = planner.coded(positions)

    # Assert: announced sparse, with the bytes coded off the event loop.
    assert positions.size == 900
    assert 0 < len(coded) < 4096
    assert coded == _announce(positions).coded_positions
    assert planner.coded(positions.copy()) == b""  # not this round's set


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
async def test_a_non_finite_momentum_falls_back_to_dense(bad: float) -> None:
    engine = _engine()
    planner = SharedIndexPlanner(engine.config, engine)
    mean = torch.ones(D)
    engine.model.step(mean, round_id=1, copy_on_write=False)
    buffer = engine.model.optimizer.state_dict()["momentum_buffer"]
    assert isinstance(buffer, torch.Tensor)
    buffer[3] = bad  # as a broken restore could leave it
    current = OpenRound(2, 1, 0.0)

    with capture_logs() as logs:
        while not planner.ready(current):  # noqa: ASYNC110 (as in _positions)
            await asyncio.sleep(0.001)
        positions = planner.positions(current)

    assert positions is None
    assert [e["event"] for e in logs] == ["secagg_index_set_failed"]
