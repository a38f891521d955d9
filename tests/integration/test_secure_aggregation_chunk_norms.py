"""The "chunk_norm" index rule end to end: clients' residual chunk norms, summed masked.

Real coordinator (127.0.0.1:0), three DiLoCoClients on threads (H = 1),
real X25519/AES masks; fedavg with lr 1. 65 parameters at density 0.2:
k = 13 positions; chunks of 8 coordinates: a tail of 9 values per push.
"""

from __future__ import annotations

import numpy as np

from fedgrpc.client.secure import SecureUpdates
from fedgrpc.compress.chunk_norms import choose_chunk_set, chunk_rms, chunk_scores
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from fedgrpc.wire.secagg import SecureRoundSetup
from tests.helpers.secure import (
    close_all,
    codes_of,
    config,
    connect,
    secure_mode_of,
    sync_all,
)

K, CHUNK, TAIL = 13, 8, 9  # ceil(0.2 x 65), C, ceil(65 / 8)


def _updates(client: object) -> SecureUpdates:
    updates = client._sync.compressed  # type: ignore[attr-defined]
    assert isinstance(updates, SecureUpdates)
    return updates


def _announce(client: object) -> SecureRoundSetup:
    last = _updates(client).last_round
    assert last is not None
    return last.announce


def test_the_unmasked_tail_sums_the_client_chunk_norms_and_the_next_set_follows() -> (
    None
):
    settings = config(
        secagg_density=0.2, secagg_index_rule="chunk_norm", secagg_index_chunk=CHUNK
    )
    with serve_in_thread(settings) as coordinator:
        clients = connect(coordinator.address, 3)
        mode = secure_mode_of(coordinator)
        try:
            # Act: round 1 (positions all random: nothing known yet).
            assert sync_all(clients, seed=1) == ["applied"] * 3
            first = mode.last_result
            announce = _announce(clients[0][0])
            tails, residuals = [], []
            for client, _ in clients:
                codes = codes_of(client)
                assert codes.size == K + TAIL  # values, then the tail
                tails.append(codes[K:].astype(np.int64))
                residuals.append(_updates(client).feedback.residual.copy())

            # Assert: each tail is its client's residual RMS per chunk, in
            # codes (stochastic rounding: within one step), and the unmasked
            # tail is exactly the sum of the three.
            assert announce.norm_chunk == CHUNK
            assert announce.norm_tail == TAIL
            scale = announce.scale
            for tail, residual in zip(tails, residuals, strict=True):
                rms = chunk_rms(residual, CHUNK) / scale.scale
                assert (np.abs(tail - np.minimum(rms, scale.qmax)) < 1).all()
                assert tail.max() > 3  # the unsent residual is really there
            assert first is not None
            np.testing.assert_array_equal(first.total[K:], np.sum(tails, axis=0))

            # Act: round 2.
            assert sync_all(clients, seed=2) == ["applied"] * 3

            # Assert: its set is the chunk-norm choice from that sum, and a
            # chunk of largest summed norm is in it whole. Saturated chunks tie
            # at 3 · qmax and the round seed orders them, so any of the tied
            # best may be the one taken whole (CI once drew chunk 6 over 0).
            second = _announce(clients[1][0])
            scores = chunk_scores(first.total[K:], 3, scale.qmax)
            expected = choose_chunk_set(scores, CHUNK, 65, K, 0.1, second.round_nonce)
            np.testing.assert_array_equal(second.positions, expected.numpy())
            assert second.positions is not None
            chosen = second.positions.astype(np.int64)
            best = np.flatnonzero(scores == scores.max())
            whole = [
                np.isin(np.arange(j * CHUNK, min(65, (j + 1) * CHUNK)), chosen).all()
                for j in best.tolist()
            ]
            assert any(whole)
            for client, _ in clients[1:]:
                np.testing.assert_array_equal(
                    _announce(client).positions, second.positions
                )
        finally:
            close_all(clients)
