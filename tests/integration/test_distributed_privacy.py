"""Distributed DP under secure aggregation, end to end (real gRPC, clients, crypto).

A coordinator with `secure_aggregation = true` and `privacy = "distributed"`
on 127.0.0.1:0 and real DiLoCoClients on threads: each client clips its
update to S, adds its discrete Gaussian share to its codes before masking,
and the coordinator unmasks only the noised sum. The checks use what each
client recorded of its own share (codes, noise) against what the
coordinator recovered.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

import fedgrpc
from fedgrpc.client import DiLoCoClient
from fedgrpc.client.secure import SecureUpdates
from fedgrpc.coordinator.secure.stats import PRIVACY_REASON
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from fedgrpc.errors import ConfigError
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


def connect(address: str, count: int) -> list[tuple[DiLoCoClient, nn.Module]]:
    def make(index: int) -> tuple[DiLoCoClient, nn.Module]:
        torch.manual_seed(index)
        model = nn.Linear(IN, OUT)
        return DiLoCoClient(address, model, config=FAST), model

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(make, range(count)))


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
            # The stage holds the round's release: 4 shares, sized for 3.
            assert mode.noise is not None
            release = mode.noise.stage.round_release(4, 4)
            assert release is not None
            assert release.noise_multiplier == pytest.approx(math.sqrt(4 / 3), rel=1e-6)
        finally:
            close_all(clients)


def test_fewer_survivors_than_dp_min_survivors_abort_before_unmasking() -> None:
    with serve_in_thread(config(**DP, dp_min_survivors=4)) as coordinator:
        clients = connect(coordinator.address, 4)
        mode = secure_mode_of(coordinator)
        try:
            assert sync_all(clients, seed=1) == ["applied"] * 4
            assert mode.noise is not None
            assert mode.noise.stage.round_release(4, 4) is not None
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
            assert mode.noise.stage.round_release(3, 4) is None
            record = mode.round_record(2)
            assert record is not None
            assert record.abort_reason == PRIVACY_REASON
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
