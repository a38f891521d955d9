"""Secure rounds at a shared sparse index set (`secagg_density` < 1), end to end.

Real coordinator (127.0.0.1:0) and DiLoCoClients on threads (H = 1), fedavg
with lr 1, so the applied step is the masked mean itself. 65 parameters at
density 0.2: k = 13 positions, 1 of them random (epsilon 0.1).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.client.secure import SecureUpdates
from fedgrpc.compress.shared_index import choose_index_set
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.wire.secagg import SecureRoundSetup
from tests.helpers.scripted import flat
from tests.helpers.secure import close_all, codes_of, config, connect, secure_mode_of

Pair = tuple[DiLoCoClient, nn.Module]
K = 13  # ceil(0.2 x 65)


def _updates(client: DiLoCoClient) -> SecureUpdates:
    updates = client._sync.compressed  # the client's own record
    assert isinstance(updates, SecureUpdates)
    return updates


def _announce(client: DiLoCoClient) -> SecureRoundSetup:
    last = _updates(client).last_round
    assert last is not None
    return last.announce


def _round(
    clients: list[Pair], seed: int, step: float
) -> tuple[list[str | None], list[torch.Tensor]]:
    """Move each model by `step` x noise, sync all at once; outcomes, local weights."""
    generator = torch.Generator().manual_seed(seed)
    for _, model in clients:
        with torch.no_grad():
            for param in model.parameters():
                param.sub_(step * torch.randn(param.shape, generator=generator))
    local = [flat(model).clone() for _, model in clients]

    def sync(pair: Pair) -> str | None:
        assert pair[0].step(None)
        return pair[0].last_round_outcome

    with ThreadPoolExecutor(len(clients)) as pool:
        return list(pool.map(sync, clients)), local


def test_a_sparse_round_sends_the_shared_set_and_keeps_the_rest_in_the_residual() -> (
    None
):
    with serve_in_thread(config(secagg_density=0.2)) as coordinator:
        clients = connect(coordinator.address, 3)
        mode = secure_mode_of(coordinator)
        try:
            # Arrange: every client starts from the global weights.
            global_before = flat(clients[0][1]).clone()
            for _, model in clients:
                torch.testing.assert_close(flat(model), global_before, rtol=0, atol=0)

            # Act: one round.
            outcomes, local = _round(clients, seed=1, step=0.05)

            # Assert: one announced set, the coordinator's choice from the nonce
            # (fedavg, nothing applied yet: all positions rank 0, so random).
            assert outcomes == ["applied"] * 3
            announce = _announce(clients[0][0])
            positions = announce.positions
            assert positions is not None
            assert positions.size == K
            for client, _ in clients[1:]:
                np.testing.assert_array_equal(_announce(client).positions, positions)
            # The coordinator's own record of it, while that round is still its
            # current one (it may already have announced the next round: the
            # clients hold sessions, so the next round can start at once).
            rnd = mode.round
            assert rnd is not None
            if rnd.round_id == announce.setup.round_id:
                np.testing.assert_array_equal(rnd.announce.positions, positions)
            expected = choose_index_set(torch.zeros(65), K, 0.1, announce.round_nonce)
            np.testing.assert_array_equal(positions, expected.numpy())
            index = torch.from_numpy(positions.astype(np.int64))
            # Each client: sent + residual == its pseudo-gradient, and what it
            # sent is its quantised values at exactly the announced positions.
            sent_values = []
            for (client, _), theirs in zip(clients, local, strict=True):
                delta = (global_before - theirs).numpy()
                codes = codes_of(client)
                assert codes.size == K
                values = announce.scale.dequantise(codes)
                sent = np.zeros_like(delta)
                sent[positions.astype(np.int64)] = values
                residual = _updates(client).feedback.residual
                np.testing.assert_allclose(sent + residual, delta, rtol=0, atol=1e-7)
                outside = np.setdiff1d(np.arange(delta.size), positions)
                np.testing.assert_array_equal(residual[outside], delta[outside])
                sent_values.append(values)
            # The applied step is the plain mean of those quantised values.
            moved = global_before - flat(clients[0][1])
            plain_mean = torch.from_numpy(np.mean(sent_values, axis=0))
            torch.testing.assert_close(moved[index], plain_mean, rtol=0, atol=1e-6)
            moved[index] = 0.0
            assert not moved.any()
        finally:
            close_all(clients)


def test_the_next_set_ranks_by_the_last_applied_sum() -> None:
    with serve_in_thread(config(secagg_density=0.2)) as coordinator:
        clients = connect(coordinator.address, 3)
        mode = secure_mode_of(coordinator)
        try:
            # Arrange: round 1 applied.
            assert _round(clients, seed=1, step=0.05)[0] == ["applied"] * 3
            first = mode.last_result
            positions = _announce(clients[0][0]).positions
            assert first is not None
            assert positions is not None

            # Act: round 2.
            assert _round(clients, seed=2, step=0.05)[0] == ["applied"] * 3

            # Assert: top |round 1 sum| (fedavg has no momentum) plus 1 random.
            ranking = torch.zeros(65)
            ranking[torch.from_numpy(positions.astype(np.int64))] = torch.from_numpy(
                np.abs(first.total).astype(np.float32)
            )
            announce = _announce(clients[1][0])
            expected = choose_index_set(ranking, K, 0.1, announce.round_nonce)
            np.testing.assert_array_equal(announce.positions, expected.numpy())
        finally:
            close_all(clients)


def _assert_guard_trip_observable(coordinator: CoordinatorThread) -> None:
    """Status and metrics show the trip: the guard's reason, sparse then dense."""
    status = coordinator.status()
    registry = coordinator.running.runtime.metrics.registry
    assert (status.guard_trips, status.secure_aggregation) == (1, True)
    tripped, dense = status.recent_rounds[-3], status.recent_rounds[-2]
    assert tripped.secure_abort_reason == "divergence_guard"
    assert (tripped.positions, dense.positions) == (K, 0)
    assert registry.get_sample_value("fedgrpc_secagg_guard_trips_total") == 1
    aborted = {"outcome": "aborted", "reason": "divergence_guard"}
    assert registry.get_sample_value("fedgrpc_secagg_rounds_total", aborted) == 1


def test_a_diverging_aggregate_trips_the_guard_and_the_next_round_is_dense() -> None:
    with serve_in_thread(config(secagg_density=0.2)) as coordinator:
        clients = connect(coordinator.address, 3)
        mode = secure_mode_of(coordinator)
        try:
            # Arrange: three healthy sparse rounds (the guard's history).
            for seed in (1, 2, 3):
                assert _round(clients, seed, step=0.02)[0] == ["applied"] * 3
            version = mode.engine.model.version

            # Act: a burst ~15x the recent norm, then two more rounds.
            with capture_logs() as logs:
                burst, _ = _round(clients, seed=4, step=0.3)
                # The skipped burst went back into each residual (stale mass).
                stale = [_updates(c).feedback.residual.copy() for c, _ in clients]
                before = [flat(model).clone() for _, model in clients]
                after, local = _round(clients, seed=5, step=0.02)
                reset_round = [_announce(client) for client, _ in clients]
                sent = [codes_of(client) for client, _ in clients]
                residual = [_updates(c).feedback.residual.copy() for c, _ in clients]
                later, _ = _round(clients, seed=6, step=0.02)

            # Assert: the burst is dropped with the guard's reason; the next
            # round masks every coordinate, and applies.
            assert burst == ["skipped"] * 3
            history = list(mode.engine.history)
            assert "divergence guard (spike)" in history[-3].reason
            assert mode.shared_index.trips == 1
            _assert_guard_trip_observable(coordinator)
            # Rounds 5 and 6 dense; round 7 (keyed once 6 closed) may count too.
            assert mode.shared_index.dense_fallbacks in (2, 3)
            announce = reset_round[0]
            assert announce.positions is None
            assert announce.num_positions == 65
            assert after == ["applied"] * 3
            assert later == ["applied"] * 3
            assert mode.engine.model.version == version + 2
            # That round's signed setup, and only that one, said reset_residuals.
            round_id = announce.setup.round_id
            assert all(a.reset_residuals for a in reset_round)
            assert all(a.setup.round_id == round_id for a in reset_round)
            announced = "secagg_residual_reset_announced"
            assert [e["round"] for e in logs if e["event"] == announced] == [round_id]
            for client, _ in clients:
                assert _announce(client).setup.round_id == round_id + 1
                assert not _announce(client).reset_residuals
            # Each client dropped its stale residual (logged as a norm, no
            # tensor) and sent exactly its own new delta, quantised: sent +
            # residual == delta, not delta + the stale residual.
            resets = {e["client"]: e for e in logs if e["event"] == "residual_reset"}
            assert sorted(resets) == sorted(client.client_id for client, _ in clients)
            for (client, _), old, base, theirs, codes, left in zip(
                clients, stale, before, local, sent, residual, strict=True
            ):
                event = resets[client.client_id]
                assert event["round"] == round_id
                assert np.linalg.norm(old) > 0.5  # the burst was really there
                assert isinstance(event["dropped_norm"], float)
                assert event["dropped_norm"] == pytest.approx(np.linalg.norm(old))
                delta = (base - theirs).numpy()
                values = announce.scale.dequantise(codes)
                assert codes.size == 65
                np.testing.assert_allclose(values + left, delta, rtol=0, atol=1e-7)
                assert np.abs(left).max() <= announce.scale.scale
        finally:
            close_all(clients)
