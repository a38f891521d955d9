"""Secure aggregation end to end: real coordinator (127.0.0.1:0), clients, crypto.

Each test runs DiLoCoClients on threads (H = 1: every step is a sync point)
against `serve_in_thread` with `secure_aggregation = true`, and checks the
coordinator's recovered sum against the codes the clients masked, exactly,
in the ring (refusals: test_secure_aggregation_rejections.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from fedgrpc.coordinator.secure.mode import SecureMode
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.secagg import ServerPhase
from tests.helpers.scripted import flat
from tests.helpers.secure import (
    IN,
    OUT,
    close_all,
    codes_of,
    config,
    connect,
    secure_mode_of,
    sync_all,
    wait_for_phase,
)


@pytest.fixture
def coordinator(request: pytest.FixtureRequest) -> Iterator[CoordinatorThread]:
    with serve_in_thread(config(**getattr(request, "param", {}))) as running:
        yield running


def test_masked_round_applies_the_exact_mean_of_the_quantised_updates(
    coordinator: CoordinatorThread,
) -> None:
    # Arrange: four clients; the federation starts from client 0's weights.
    clients = connect(coordinator.address, 4)
    mode = secure_mode_of(coordinator)
    try:
        before = flat(clients[0][1])

        # Act: one round.
        outcomes = sync_all(clients, seed=1)

        # Assert: the ring sum is exactly the sum of the clients' codes, and
        # the applied step is its dequantised plain mean (fedavg, lr 1).
        assert outcomes == ["applied"] * 4
        # Closed because the sum was recovered, not by a deadline.
        closed = coordinator.running.runtime.engine.history[-1]
        assert closed.reason == "masked sum of the survivors recovered"
        result = mode.last_result
        assert result is not None
        assert len(result.survivors) == 4
        codes = [codes_of(c).astype(np.int64) for c, _ in clients]
        np.testing.assert_array_equal(result.total, np.sum(codes, axis=0))
        rnd = mode.round
        assert rnd is not None
        mean = torch.from_numpy(rnd.announce.scale.dequantise(result.total)) / 4
        after = flat(clients[0][1])
        torch.testing.assert_close(before - after, mean, rtol=0, atol=1e-6)
        for _, model in clients[1:]:
            torch.testing.assert_close(flat(model), after, rtol=0, atol=0)
        # Only masked data and the ring sum are held, never a client's codes.
        held = rnd.holdings()
        assert set(held) == {"ring_sum"}
        ring = rnd.ring
        for client_codes in codes:
            lifted = ring.lift(client_codes)
            assert not any(np.array_equal(lifted, v) for v in held.values())
    finally:
        close_all(clients)


def test_a_shared_sparse_index_set_masks_and_applies_only_those_positions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrange: the coordinator announces every third coordinate (the hook
    # compress.shared_index will fill); three clients.
    positions = np.arange(0, (IN + 1) * OUT, 3, dtype=np.uint64)
    monkeypatch.setattr(SecureMode, "index_set", lambda self, current: positions)
    with serve_in_thread(config()) as coordinator:
        clients = connect(coordinator.address, 3)
        mode = secure_mode_of(coordinator)
        try:
            before = flat(clients[0][1])

            # Act
            outcomes = sync_all(clients, seed=1)

            # Assert: exact sum at the positions, nothing moved elsewhere.
            assert outcomes == ["applied"] * 3
            result = mode.last_result
            assert result is not None
            codes = [codes_of(c).astype(np.int64) for c, _ in clients]
            assert codes[0].size == positions.size
            np.testing.assert_array_equal(result.total, np.sum(codes, axis=0))
            moved = (flat(clients[0][1]) - before).numpy()
            untouched = np.setdiff1d(np.arange(moved.size), positions)
            assert not moved[untouched].any()
        finally:
            close_all(clients)


def test_a_client_dropping_after_sharing_keys_leaves_the_survivors_sum_exact(
    coordinator: CoordinatorThread,
) -> None:
    # Arrange: four clients, t = 3; the round's keys are exchanged.
    clients = connect(coordinator.address, 4)
    mode = secure_mode_of(coordinator)
    try:
        assert sync_all(clients, seed=1) == ["applied"] * 4  # round 1, all present
        wait_for_phase(mode, ServerPhase.MASKED_INPUT, 2)

        # Act: client 3 leaves after sharing, the others push.
        clients[3][0].close()
        outcomes = sync_all(clients[:3], seed=2)

        # Assert: the dropped client's masks were removed from the sum exactly.
        assert outcomes == ["applied"] * 3
        result = mode.last_result
        assert result is not None
        assert len(result.survivors) == 3
        codes = [codes_of(c).astype(np.int64) for c, _ in clients[:3]]
        np.testing.assert_array_equal(result.total, np.sum(codes, axis=0))
    finally:
        close_all(clients)


def test_fewer_survivors_than_the_threshold_abort_the_round_then_it_recovers(
    coordinator: CoordinatorThread,
) -> None:
    # Arrange: four clients (t = 3); after the key exchange two leave.
    clients = connect(coordinator.address, 4)
    mode = secure_mode_of(coordinator)
    try:
        sync_all(clients, seed=1)
        wait_for_phase(mode, ServerPhase.MASKED_INPUT, 2)
        clients[2][0].close()
        clients[3][0].close()
        published = mode.engine.model.published
        assert published is not None
        before = published.data.clone()

        # Act: the two survivors push; then a third client joins for round 3.
        outcomes = sync_all(clients[:2], seed=2)
        version_after_abort = mode.engine.model.version
        published = mode.engine.model.published
        assert published is not None
        weights_after_abort = published.data.clone()
        newcomer = connect(coordinator.address, 1, seed=7)
        clients.extend(newcomer)
        later = sync_all([*clients[:2], *newcomer], seed=3)

        # Assert: round 2 skipped with the threshold named, weights unchanged;
        # round 3 applied with three participants.
        assert outcomes == ["skipped", "skipped"]
        history = list(mode.engine.history)
        assert "threshold" in history[-2].reason
        assert version_after_abort == 1
        torch.testing.assert_close(weights_after_abort, before, rtol=0, atol=0)
        assert later == ["applied"] * 3
        assert mode.engine.model.version == 2
    finally:
        close_all(clients)


def test_a_client_joining_after_the_setup_misses_that_round_only(
    coordinator: CoordinatorThread,
) -> None:
    # Arrange: three clients; round 1's key exchange is done.
    clients = connect(coordinator.address, 3)
    mode = secure_mode_of(coordinator)
    try:
        wait_for_phase(mode, ServerPhase.MASKED_INPUT, 1)

        # Act: a fourth joins, then everyone syncs twice.
        clients.extend(connect(coordinator.address, 1, seed=9))
        first = sync_all(clients, seed=1)
        second = sync_all(clients, seed=2)

        # Assert: refused in round 1 (not a participant), in round 2 from the start.
        assert first == ["applied", "applied", "applied", "missed"]
        assert second == ["applied"] * 4
        assert mode.last_result is not None
        assert len(mode.last_result.survivors) == 4
    finally:
        close_all(clients)


def test_secure_aggregation_refuses_a_topk_codec_at_startup() -> None:
    with pytest.raises(ValueError, match="dense:int8 or dense:int4"):
        config(codec="topk:0.01:int8")
