"""The "residual_age" index rule end to end: the next set from the unmasked means.

Real coordinator (127.0.0.1:0), three DiLoCoClients on threads (H = 1),
real X25519/AES masks; fedavg with lr 1. 65 parameters at density 0.2:
k = 13 positions, epsilon 0.1 (1 random once something is known).
"""

from __future__ import annotations

import numpy as np
import torch

from fedgrpc.client.secure import SecureUpdates
from fedgrpc.compress.residual_age import ResidualAge
from fedgrpc.compress.shared_index import choose_index_set
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from fedgrpc.secagg import AggregateResult
from fedgrpc.wire.secagg import SecureRoundSetup
from tests.helpers.secure import close_all, config, connect, secure_mode_of, sync_all

D, K = 65, 13  # nn.Linear(12, 5); ceil(0.2 x 65)


def _announce(client: object) -> SecureRoundSetup:
    updates = client._sync.compressed  # type: ignore[attr-defined]
    assert isinstance(updates, SecureUpdates)
    assert updates.last_round is not None
    return updates.last_round.announce


def _record(
    age: ResidualAge, announce: SecureRoundSetup, result: AggregateResult
) -> None:
    """What the coordinator should have learnt: the round's mean at its positions."""
    assert announce.positions is not None
    codes = result.total[: announce.num_positions].astype(np.float32)
    mean = torch.from_numpy(codes) * (announce.scale.scale / len(result.survivors))
    age.record(torch.from_numpy(announce.positions.astype(np.int64)), mean)


def test_each_set_follows_the_means_so_far_and_rotates_through_the_model() -> None:
    settings = config(secagg_density=0.2, secagg_index_rule="residual_age")
    with serve_in_thread(settings) as coordinator:
        clients = connect(coordinator.address, 3)
        mode = secure_mode_of(coordinator)
        expected_age = ResidualAge(D)
        sent: list[set[int]] = []
        try:
            for round_seed in (1, 2, 3):
                # Act
                assert sync_all(clients, seed=round_seed) == ["applied"] * 3

                # Assert: every client got the same set, and it is the choice
                # from what the earlier rounds' unmasked means taught (round 1:
                # nothing yet, so all random).
                announce = _announce(clients[0][0])
                assert announce.positions is not None
                for client, _ in clients[1:]:
                    np.testing.assert_array_equal(
                        _announce(client).positions, announce.positions
                    )
                expected = choose_index_set(
                    expected_age.scores(), K, 0.1, announce.round_nonce
                )
                np.testing.assert_array_equal(announce.positions, expected.numpy())
                result = mode.last_result
                assert result is not None
                assert len(result.survivors) == 3
                _record(expected_age, announce, result)
                sent.append(set(announce.positions.astype(np.int64).tolist()))

            # The set rotates: unsent coordinates outrank most sent ones (a
            # sent one stays only above twice the median rate), so round 2
            # and round 3 each reach coordinates no earlier round sent.
            assert len(sent[1] - sent[0]) >= K // 2
            assert sent[2] - (sent[0] | sent[1])
        finally:
            close_all(clients)
