"""Distributed DP under secure aggregation, end to end (real gRPC, clients, crypto).

A coordinator with `secure_aggregation = true` and `privacy = "distributed"`
on 127.0.0.1:0 and real DiLoCoClients on threads: each client clips its
update to S, adds its discrete Gaussian share to its codes before masking,
and the coordinator unmasks only the noised sum. The checks use what each
client recorded of its own share (codes, noise) against what the
coordinator recovered.
"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

import fedgrpc
from fedgrpc._proto.v1 import admin_pb2
from fedgrpc.client import DiLoCoClient
from fedgrpc.client.secure import SecureUpdates
from fedgrpc.coordinator.secure.mode import SecureMode
from fedgrpc.coordinator.secure.stats import PRIVACY_REASON
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from fedgrpc.errors import ConfigError
from fedgrpc.privacy import PrivacyLedger, Release
from fedgrpc.privacy.distributed import NoisyShare
from fedgrpc.secagg import ServerPhase
from tests.helpers.scripted import FAST, flat
from tests.helpers.secure import (
    close_all,
    config,
    secure_mode_of,
    sync_all,
    wait_for_phase,
)

IN, OUT = 100, 50
"""5,050 parameters: enough coordinates that the noise variance estimate is
within 2 % (std sqrt(2/d)); a 10 % tolerance is then five standard errors."""
DP = {"privacy": "distributed", "dp_clip_norm": 1.0, "dp_noise_multiplier": 1.0}


def connect(
    address: str, count: int, floors: tuple[float, ...] = ()
) -> list[tuple[DiLoCoClient, nn.Module]]:
    """`count` clients; `floors[i]`: client i's min_dp_noise_multiplier."""

    def make(index: int) -> tuple[DiLoCoClient, nn.Module]:
        torch.manual_seed(index)
        model = nn.Linear(IN, OUT)
        floor = floors[index] if floors else 0.0
        settings = dataclasses.replace(FAST, min_dp_noise_multiplier=floor)
        return DiLoCoClient(address, model, config=settings), model

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(make, range(count)))


def _releases(mode: SecureMode) -> tuple[Release, ...]:
    """What the run's ledger (the engine's privacy budget) recorded so far."""
    ledger = mode.engine.privacy.ledger
    assert ledger is not None
    return tuple(ledger.releases)


def share_of(client: DiLoCoClient) -> NoisyShare:
    updates = client._sync.compressed  # the client's own record
    assert isinstance(updates, SecureUpdates)
    assert updates.last_share is not None
    return updates.last_share


def test_the_unmasked_sum_is_clipped_codes_plus_noise_of_the_announced_variance() -> (
    None
):
    with serve_in_thread(config(**DP)) as coordinator:
        clients = connect(coordinator.address, 4)
        mode = secure_mode_of(coordinator)
        try:
            before = flat(clients[0][1])

            # Act: one round; every model moved by ~3.5 in L2 (clipped to 1).
            outcomes = sync_all(clients, seed=1)

            # Assert: applied, and the announcement carried the noise.
            assert outcomes == ["applied"] * 4
            rnd, result = mode.round, mode.last_result
            assert rnd is not None
            assert result is not None
            noise = rnd.announce.noise
            assert noise is not None
            assert rnd.ring.bits == rnd.announce.setup.ring_bits > 8 + 2
            shares = [share_of(c) for c, _ in clients]
            codes = np.sum([s.codes for s in shares], axis=0)
            noises = np.sum([s.noise for s in shares], axis=0)
            # Exact: the ring never wrapped, nothing but codes and noise is in.
            np.testing.assert_array_equal(result.total, codes + noises)
            # Each client clipped to S before rounding, and rounded within Δ2.
            for share in shares:
                assert share.norm > 1.0
                assert float(np.linalg.norm(share.codes)) <= noise.norm_bound
            # The noise in the sum has variance n sigma_c^2 (4 shares).
            observed = (result.total - codes).astype(np.float64).var()
            assert observed / (4 * noise.client_std**2) == pytest.approx(1.0, abs=0.1)
            # The applied step is the noised sum's plain mean (fedavg, lr 1).
            step = rnd.announce.scale.dequantise(result.total) / 4
            after = flat(clients[0][1])
            torch.testing.assert_close(before - after, torch.from_numpy(step),
                                       rtol=0, atol=1e-6)  # fmt: skip
            # The run's ledger took the round's release: 4 shares, sized for 3.
            release = _releases(mode)[-1]
            assert release.noise_multiplier == pytest.approx(math.sqrt(4 / 3), rel=1e-6)
            assert mode.engine.privacy.epsilon == pytest.approx(
                PrivacyLedger(releases=[release]).epsilon(1e-5)
            )
        finally:
            close_all(clients)


def test_fewer_survivors_than_dp_min_survivors_abort_before_unmasking() -> None:
    with serve_in_thread(config(**DP, dp_min_survivors=4)) as coordinator:
        clients = connect(coordinator.address, 4)
        mode = secure_mode_of(coordinator)
        try:
            assert sync_all(clients, seed=1) == ["applied"] * 4
            assert sum(r.count for r in _releases(mode)) == 1
            wait_for_phase(mode, ServerPhase.MASKED_INPUT, 2)
            unmasked = mode.last_result

            # Act: one client leaves after the key exchange; three push.
            clients[3][0].close()
            outcomes = sync_all(clients[:3], seed=2)

            # Assert: skipped with the reason, nothing unmasked, nothing spent.
            assert outcomes == ["skipped"] * 3
            closed = mode.engine.history[-1]
            assert "dp_min_survivors = 4" in closed.reason
            assert mode.last_result is unmasked
            assert sum(r.count for r in _releases(mode)) == 1  # nothing spent
            record = mode.round_record(2)
            assert record is not None
            assert record.abort_reason == PRIVACY_REASON
        finally:
            close_all(clients)


def test_a_round_the_budget_refuses_is_never_unmasked() -> None:
    with serve_in_thread(config(**DP)) as coordinator:
        clients = connect(coordinator.address, 3)
        mode = secure_mode_of(coordinator)
        try:
            assert sync_all(clients, seed=1) == ["applied"] * 3
            assert mode.noise is not None
            first = _releases(mode)[-1]
            ledger = PrivacyLedger("rdp", releases=[first])
            limit = 1.1 * ledger.epsilon(1e-5)  # room for less than one more

            def budget(release: Release) -> str | None:
                spent = ledger.epsilon_after(release, 1e-5)
                return None if spent <= limit else f"ε would reach {spent:.3g}"

            mode.noise.stage.budget = budget
            unmasked = mode.last_result

            # Act: round 2 runs its masked phases; its release would exceed.
            outcomes = sync_all(clients, seed=2)

            # Assert: skipped, the budget's reason given, nothing unmasked.
            assert outcomes == ["skipped"] * 3
            assert "ε would reach" in mode.engine.history[-1].reason
            assert mode.last_result is unmasked
            assert sum(r.count for r in _releases(mode)) == 1  # nothing spent
        finally:
            close_all(clients)


@pytest.mark.parametrize(
    ("privacy", "floors"),
    [
        # z = 1 sized for 3 of 4 participants: sqrt(4/3) = 1.15 at the setup.
        (DP, (0.9, 0.9, 0.9, 1.2)),
        # No noise at all: only the client with a floor refuses.
        ({}, (0.0, 0.0, 0.0, 0.5)),
    ],
)
def test_a_client_refuses_a_round_with_less_noise_than_its_floor(
    privacy: dict[str, object], floors: tuple[float, ...]
) -> None:
    # Arrange: client 3's floor is above what the round announces.
    with serve_in_thread(config(**privacy, round_timeout_s=3.0)) as coordinator:
        clients = connect(coordinator.address, 4, floors=floors)
        mode = secure_mode_of(coordinator)
        try:
            # Act
            outcomes = sync_all(clients, seed=1)

            # Assert: client 3 left at the setup; the other three's sum applied.
            assert outcomes[:3] == ["applied"] * 3
            assert outcomes[3] != "applied"
            assert mode.last_result is not None
            assert sorted(mode.last_result.survivors) == sorted(
                c.client_id for c, _ in clients[:3]
            )
            participant = clients[3][0]._secure
            assert participant is not None
            assert participant.participant is not None
            assert 1 in participant.participant.excluded
        finally:
            close_all(clients)


def test_distributed_privacy_without_secure_aggregation_is_refused_at_start() -> None:
    # The refusal comes from the config every shell builds (serve, Coordinator).
    with pytest.raises(ConfigError, match="secure_aggregation = true"):
        fedgrpc.CoordinatorConfig(listen="127.0.0.1:0", **DP)  # type: ignore[arg-type]


def test_noise_no_ring_can_hold_is_refused_when_the_coordinator_starts() -> None:
    settings = config(privacy="distributed", dp_clip_norm=1.0,
                      dp_noise_multiplier=1e16, secagg_clip=1e-6)  # fmt: skip
    with pytest.raises(ConfigError, match="64 bits"), serve_in_thread(settings):
        pass


def test_max_epsilon_keeps_the_sum_past_it_masked_and_finishes_the_run() -> None:
    # z = 1 with n = n_min = 3 survivors: epsilon 4.73 after one round, 7.08
    # after two; a budget between them lets round 1 unmask, never round 2.
    one = PrivacyLedger(releases=[Release(1.0)]).epsilon(1e-5)
    two = PrivacyLedger(releases=[Release(1.0, count=2)]).epsilon(1e-5)
    with serve_in_thread(config(**DP, max_epsilon=(one + two) / 2)) as coordinator:
        clients = connect(coordinator.address, 3)
        mode = secure_mode_of(coordinator)
        try:
            assert sync_all(clients, seed=1) == ["applied"] * 3
            unmasked = mode.last_result
            sync_all(clients, seed=2)
            status = coordinator.status()
        finally:
            close_all(clients)
    closed = mode.engine.history[-1]
    assert closed.privacy_exhausted
    assert closed.run_finished
    assert "privacy budget" in closed.reason
    assert mode.last_result is unmasked  # round 2's sum was never unmasked
    assert status.privacy_epsilon == pytest.approx(one, rel=1e-3)
    assert status.phase == admin_pb2.ROUND_PHASE_FINISHED
