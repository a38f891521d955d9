"""Whole rounds: the unmasked sum is exactly the plain sum, with or without dropouts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedgrpc.errors import ConfigError, InvalidUpdateError
from fedgrpc.secagg import (
    AbortReason,
    ClientPhase,
    KeyDirectory,
    SecAggParams,
    ServerPhase,
    TooFewClientsError,
)
from tests.unit.secagg._federation import (
    Federation,
    make_setup,
    random_codes,
    sparse_positions,
)
from tests.unit.secagg._stats import chi_square_uniform


def _plain_sum(codes, survivors) -> np.ndarray:
    total: np.ndarray = np.sum([codes[c].astype(np.int64) for c in survivors], axis=0)
    return total


@pytest.mark.parametrize(
    ("n", "value_bits", "size", "density"),
    [
        (3, 8, 10_000, 0.01),
        (5, 4, 1_000, 0.5),
        (8, 8, 1_000_000, 0.001),
        (17, 8, 50_000, 0.02),
        (12, 16, 5_000, 0.1),
    ],
)
def test_unmasked_sum_equals_plain_sum(n, value_bits, size, density) -> None:
    setup = make_setup(n, value_bits=value_bits)
    positions = sparse_positions(size, density, seed=n)
    codes = random_codes(setup.participants, positions.size, value_bits, seed=n)

    result = Federation(setup, positions, seed=n).run(codes)

    assert result.survivors == setup.participants
    assert result.ring_sum.dtype == setup.ring().dtype
    assert np.array_equal(result.total, _plain_sum(codes, setup.participants))


def test_harary_round_sums_exactly() -> None:
    params = SecAggParams(complete_graph_max_clients=8, degree=8)
    setup = make_setup(24, params=params)
    positions = sparse_positions(100_000, 0.01, seed=3)
    codes = random_codes(setup.participants, positions.size, 8, seed=3)
    ids = setup.participants

    result = Federation(setup, positions, seed=3).run(
        codes, drop_after_share=ids[5:6], drop_after_mask=ids[9:10]
    )

    assert setup.graph().degree == 8
    assert len(result.survivors) == 23
    assert np.array_equal(result.total, _plain_sum(codes, result.survivors))


@pytest.mark.parametrize(
    "drops",
    [
        {"drop_before_advertise": [0], "drop_after_advertise": [1]},
        {"drop_after_share": [2, 3, 4]},
        {"drop_after_share": [2], "drop_after_mask": [3, 4]},
        {
            "drop_after_advertise": [0],
            "drop_after_share": [6],
            "drop_after_confirm": [7],
        },
        {"drop_after_confirm": [1, 2, 3]},
    ],
    ids=["before-sharing", "after-sharing", "mixed", "every-phase", "after-confirm"],
)
def test_up_to_n_minus_t_dropouts_still_give_the_survivors_exact_sum(drops) -> None:
    # n = 8, complete graph: t = 5 of 8 holders, so up to n - t = 3 may drop.
    setup = make_setup(8)
    ids = setup.participants
    positions = sparse_positions(200_000, 0.01, seed=1)
    codes = random_codes(ids, positions.size, 8, seed=1)
    named = {phase: [ids[i] for i in who] for phase, who in drops.items()}

    result = Federation(setup, positions, seed=1).run(codes, **named)

    gone_before_input = {
        c
        for phase in (
            "drop_before_advertise",
            "drop_after_advertise",
            "drop_after_share",
        )
        for c in named.get(phase, [])
    }
    assert result.survivors == tuple(c for c in ids if c not in gone_before_input)
    assert np.array_equal(result.total, _plain_sum(codes, result.survivors))


def test_fewer_than_t_survivors_abort_cleanly_with_a_reason() -> None:
    setup = make_setup(8)  # t = 5
    ids = setup.participants
    positions = sparse_positions(1_000, 0.1)
    federation = Federation(setup, positions)
    directory = federation.advertise()
    federation.share_keys(directory)
    senders = federation.deliver_shares()
    codes = random_codes(ids, positions.size, 8)

    with pytest.raises(TooFewClientsError, match="threshold is 5") as caught:
        federation.mask(codes, senders, drop=ids[:4])

    assert caught.value.reason is AbortReason.TOO_FEW_CLIENTS
    assert federation.server.phase is ServerPhase.ABORTED


def test_too_few_confirmations_abort_before_any_share_is_revealed() -> None:
    setup = make_setup(6)  # h = 6 holders, c = 1: t = floor((6 + 1) / 2) + 1 = 4
    ids = setup.participants
    positions = sparse_positions(1_000, 0.1)
    federation = Federation(setup, positions)
    federation.share_keys(federation.advertise())
    senders = federation.deliver_shares()
    survivors = federation.mask(random_codes(ids, positions.size, 8), senders)

    with pytest.raises(TooFewClientsError, match="confirmed the survivor list"):
        federation.confirm(survivors, drop=ids[:3])

    assert all(c.phase is not ClientPhase.DONE for c in federation.clients.values())


def test_a_client_refuses_to_share_with_fewer_than_t_neighbours() -> None:
    setup = make_setup(8)
    federation = Federation(setup, sparse_positions(100, 0.5))
    client = federation.clients[setup.participants[0]]
    alone = KeyDirectory((client.advertise(),))

    with pytest.raises(TooFewClientsError, match="advertised keys"):
        client.share_keys(alone)

    assert client.phase is ClientPhase.ABORTED


@pytest.mark.parametrize(("n", "value_bits"), [(32, 8), (3, 8), (32, 4)])
def test_a_masked_input_is_indistinguishable_from_uniform(n, value_bits) -> None:
    # The coordinator's view of one client: constant codes (the worst case to
    # hide) come out uniform on the ring; the same codes unmasked do not.
    setup = make_setup(n, value_bits=value_bits)
    ring, ids = setup.ring(), setup.participants
    positions = np.arange(1 << 16)
    codes = {c: np.full(positions.size, 3) for c in ids}
    federation = Federation(setup, positions, seed=11)
    federation.share_keys(federation.advertise())
    federation.deliver_shares()
    victim = federation.clients[ids[0]]

    masked = victim.mask_input(positions, codes[ids[0]]).values
    statistic, critical = chi_square_uniform(masked, ring.bits)
    plain, _ = chi_square_uniform(ring.lift(codes[ids[0]]), ring.bits)

    assert statistic < critical
    assert plain > 100 * critical


def test_codes_wider_than_announced_are_refused_and_can_be_retried() -> None:
    # Codes beyond b bits could overflow the ring after summing: refuse them.
    setup = make_setup(4, value_bits=4)
    positions = sparse_positions(100, 0.5)
    federation = Federation(setup, positions)
    federation.share_keys(federation.advertise())
    federation.deliver_shares()
    client = federation.clients[setup.participants[0]]

    with pytest.raises(InvalidUpdateError, match=r"\[-7, 7\]"):
        client.mask_input(positions, np.full(positions.size, 8))

    assert client.phase is ClientPhase.RECEIVED
    assert client.mask_input(positions, np.full(positions.size, 7)).values.size == 50


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"participants": ("b", "a", "c")}, "participants"),
        ({"participants": ("a", "a", "c")}, "participants"),
        ({"participants": ("a", "b")}, "participants"),
        ({"graph_seed": bytes(31)}, "graph_seed"),
        ({"value_bits": 1}, "value_bits"),
        ({"round_id": -1}, "round_id"),
    ],
)
def test_round_setup_is_validated_at_construction(changes, field) -> None:
    base = make_setup(3)

    with pytest.raises(ConfigError, match=field):
        dataclasses.replace(base, **changes)
