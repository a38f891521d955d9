"""SecureRound: when each phase closes, who is dropped, what the coordinator holds.

Real `secagg.ClientRound`s produce the messages; an injected clock moves
deadlines. No gRPC: the runtime's glue is tested in the integration tests.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from fedgrpc.coordinator.secure.masked_round import SecureRound
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.errors import WrongRoundError
from fedgrpc.secagg import (
    ClientRound,
    FixedPointScale,
    KeyDirectory,
    RoundSetup,
    SecAggParams,
    ServerPhase,
    TooFewClientsError,
)
from fedgrpc.wire.secagg import SecureRoundSetup

IDS = ("a", "b", "c", "d")
TIMEOUT_S = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts() -> tuple[SecureRound, dict[str, ClientRound], Clock]:
    keys = {c: PrivateKey.generate() for c in IDS}
    setup = RoundSetup(
        session_id=b"s" * 24, round_id=1, participants=IDS,
        graph_seed=os.urandom(32), value_bits=8,
        params=SecAggParams(degree=3, threshold=3),
    )  # fmt: skip
    identities = {c: k.public_key for c, k in keys.items()}
    announce = SecureRoundSetup(setup, identities, b"n" * 16, FixedPointScale(1.0), 8)
    clock = Clock()
    rnd = SecureRound(announce, PrivateKey.generate(), clock, TIMEOUT_S)
    clients = {c: ClientRound(setup, c, keys[c], identities) for c in IDS}
    return rnd, clients, clock


def test_advertise_waits_for_everyone_until_its_deadline(
    parts: tuple[SecureRound, dict[str, ClientRound], Clock],
) -> None:
    rnd, clients, clock = parts
    for c in IDS[:3]:
        rnd.receive(c, clients[c].advertise())
    assert not rnd.ready_to_close()  # d is still expected

    clock.now += TIMEOUT_S
    assert rnd.ready_to_close()
    out = rnd.close_phase()

    assert sorted(c for c, _ in out) == ["a", "b", "c"]
    assert all(isinstance(m, KeyDirectory) for _, m in out)
    assert rnd.server.phase is ServerPhase.SHARE_KEYS


def test_a_dropped_client_is_not_waited_for_and_its_messages_are_refused(
    parts: tuple[SecureRound, dict[str, ClientRound], Clock],
) -> None:
    rnd, clients, _ = parts
    advert = clients["d"].advertise()
    rnd.drop("d")
    for c in IDS[:3]:
        rnd.receive(c, clients[c].advertise())

    assert rnd.ready_to_close()  # no deadline needed
    with pytest.raises(WrongRoundError, match="dropped"):
        rnd.receive("d", advert)


def test_masked_input_has_no_deadline_before_its_first_commit(
    parts: tuple[SecureRound, dict[str, ClientRound], Clock],
) -> None:
    rnd, clients, clock = parts
    for c in IDS:
        rnd.receive(c, clients[c].advertise())
    (_, directory), *_ = rnd.close_phase()
    assert isinstance(directory, KeyDirectory)
    for c in IDS:
        rnd.receive(c, clients[c].share_keys(directory))
    rnd.close_phase()
    assert rnd.server.phase is ServerPhase.MASKED_INPUT

    clock.now += 100 * TIMEOUT_S  # clients train H steps first: no deadline yet
    assert not rnd.ready_to_close()


def test_too_few_advertisements_abort_the_round(
    parts: tuple[SecureRound, dict[str, ClientRound], Clock],
) -> None:
    rnd, clients, clock = parts
    for c in IDS[:2]:  # t = 3
        rnd.receive(c, clients[c].advertise())
    clock.now += TIMEOUT_S

    with pytest.raises(TooFewClientsError, match="threshold is 3"):
        rnd.close_phase()
    assert rnd.holdings().keys() == {"ring_sum"}
    assert not np.any(rnd.holdings()["ring_sum"])
