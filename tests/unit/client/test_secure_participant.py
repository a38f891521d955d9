"""client.secure.participant: a setup the client cannot use makes it leave that round.

No gRPC: the participant gets the SessionResponse bytes the coordinator
would send, as its session reader hands them over.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from structlog.testing import capture_logs

from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.client.connection.join import Federation
from fedgrpc.client.secure import SecureParticipant
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.domain.codecs import parse_codec
from fedgrpc.secagg import FixedPointScale, RoundSetup, SecAggParams
from fedgrpc.wire.secagg import SecureRoundSetup, server_event, session_id

RUN, NONCE, ROUND, MODEL = "run-1", b"n" * 16, 3, 1_000


def _signed_sparse_setup(coordinator: PrivateKey, me: str) -> pb.SessionResponse:
    ids = tuple(sorted((me, "b", "c")))
    keys = {c: PrivateKey.generate().public_key for c in ids}
    setup = RoundSetup(
        session_id=session_id(RUN, NONCE), round_id=ROUND, participants=ids,
        graph_seed=os.urandom(32), value_bits=8,
        params=SecAggParams(degree=2, threshold=3),
    )  # fmt: skip
    positions = np.array([5, 50, 500], dtype=np.uint64)
    announce = SecureRoundSetup(setup, keys, NONCE, FixedPointScale(0.5), 3, positions)
    announce = dataclasses.replace(
        announce, signature=coordinator.sign(announce.statement())
    )
    return server_event(ROUND, announce)


def _participant(
    coordinator: PrivateKey, sent: list[pb.SessionRequest]
) -> SecureParticipant:
    federation = Federation(
        run_id=RUN, inner_steps=1, chunk_bytes=1 << 20, model_version=0,
        seed_model=False, codec=parse_codec("dense:int8"), feedback_decay=1.0,
        coordinator_key=coordinator.public_key, round_nonce=NONCE, signed=True,
        secure_aggregation=True,
    )  # fmt: skip
    return SecureParticipant(PrivateKey.generate(), "a", federation, sent.append, MODEL)


async def test_a_well_formed_sparse_setup_is_joined() -> None:
    coordinator = PrivateKey.generate()
    sent: list[pb.SessionRequest] = []
    participant = _participant(coordinator, sent)

    await participant.handle(_signed_sparse_setup(coordinator, "a"))

    joined = participant.rounds[ROUND]
    assert joined.error is None
    assert joined.announce.positions is not None
    assert joined.announce.positions.tolist() == [5, 50, 500]
    assert [r.WhichOneof("event") for r in sent] == ["secagg_advertise"]


async def test_a_malformed_coded_set_makes_the_client_leave_the_round() -> None:
    # Arrange: the signed setup with its coded set cut short in transit.
    coordinator = PrivateKey.generate()
    sent: list[pb.SessionRequest] = []
    participant = _participant(coordinator, sent)
    response = _signed_sparse_setup(coordinator, "a")
    coded = response.secagg_setup.coded_positions
    response.secagg_setup.coded_positions = coded[:-1]

    # Act
    with capture_logs() as logs:
        await participant.handle(response)
        settled = await participant.wait_ready(ROUND, timeout_s=0.5)

    # Assert: no keys advertised, the round left at once, the reason logged.
    assert sent == []
    assert settled is None
    assert ROUND in participant.excluded
    [event] = logs
    assert event["event"] == "secagg_round_left"
    assert event["round"] == ROUND
    assert event["kind"] == "malformed"
    assert "index body has 3 bytes, expected 4" in event["reason"]


async def test_a_setup_of_an_older_coordinator_layout_makes_the_client_leave() -> None:
    # Arrange: a signed setup as a coordinator predating keystream layout 2
    # sends it (field 40 unset: layout 1, one AES block per position).
    coordinator = PrivateKey.generate()
    sent: list[pb.SessionRequest] = []
    participant = _participant(coordinator, sent)
    response = _signed_sparse_setup(coordinator, "a")
    response.secagg_setup.ClearField("keystream_layout")

    # Act
    with capture_logs() as logs:
        await participant.handle(response)
        settled = await participant.wait_ready(ROUND, timeout_s=0.5)

    # Assert: nothing advertised (no masks of a layout the sum cannot use),
    # the round left at once, and the reason names both layouts.
    assert sent == []
    assert settled is None
    assert ROUND in participant.excluded
    [event] = logs
    assert event["event"] == "secagg_round_left"
    assert "keystream layout 1 (one AES block per position)" in event["reason"]
    assert "this client masks with layout 2" in event["reason"]
