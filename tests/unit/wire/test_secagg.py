"""wire.secagg: every secure-aggregation message survives its proto, byte for byte.

A whole round of the real state machines (`secagg.ClientRound`,
`secagg.ServerRound`) runs with every message serialised to its
SessionRequest / SessionResponse bytes and parsed back in between, and the
recovered sum must equal the plain sum of the codes exactly.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TypeVar

import numpy as np
import pytest

from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.crypto.keys import PrivateKey, PublicKey
from fedgrpc.errors import BadSignatureError, InvalidUpdateError
from fedgrpc.secagg import ClientRound, FixedPointScale, RoundSetup, ServerRound
from fedgrpc.secagg.graph import SecAggParams
from fedgrpc.wire.ring import (
    RingChunkCheck,
    encode_ring_values,
    ring_values_per_chunk,
)
from fedgrpc.wire.secagg import (
    ClientPayload,
    SecureRoundSetup,
    ServerPayload,
    client_event,
    client_event_from_proto,
    server_event,
    server_event_from_proto,
    session_id,
)

RUN, NONCE, ROUND = "run-1", b"n" * 16, 7
MODEL = 1_000  # the receiving client's model size: positions lie below it


S = TypeVar("S", bound=ServerPayload)
C = TypeVar("C", bound=ClientPayload)


def to_client(payload: S) -> S:
    wire = pb.SessionResponse.FromString(
        server_event(ROUND, payload).SerializeToString()
    )
    decoded = server_event_from_proto(wire, RUN, MODEL)
    assert decoded is not None
    assert decoded[0] == ROUND
    assert isinstance(decoded[1], type(payload))
    return decoded[1]


def to_server(payload: C) -> C:
    wire = pb.SessionRequest.FromString(
        client_event(ROUND, payload).SerializeToString()
    )
    decoded = client_event_from_proto(wire)
    assert decoded is not None
    assert decoded[0] == ROUND
    assert isinstance(decoded[2], type(payload))
    return decoded[2]


def test_a_round_through_the_protos_sums_exactly() -> None:
    # Arrange: four participants, one round-wide scale, dense positions.
    ids = ("a", "b", "c", "d")
    keys = {c: PrivateKey.generate() for c in ids}
    identities = {c: k.public_key for c, k in keys.items()}
    setup = RoundSetup(
        session_id=session_id(RUN, NONCE), round_id=ROUND, participants=ids,
        graph_seed=os.urandom(32), value_bits=8,
        params=SecAggParams(degree=3, threshold=3),
    )  # fmt: skip
    announce = SecureRoundSetup(setup, identities, NONCE, FixedPointScale(0.5), 50)
    seen = to_client(announce)
    assert isinstance(seen, SecureRoundSetup)
    assert seen.setup == setup
    clients = {c: ClientRound(seen.setup, c, keys[c], seen.identities) for c in ids}
    server = ServerRound(setup, announce.index_set(), identities=identities)
    rng = np.random.default_rng(0)
    codes = {c: rng.integers(-127, 128, 50).astype(np.int8) for c in ids}

    # Act: every message crosses the wire.
    for c in ids:
        server.receive_advertisement(to_server(clients[c].advertise()))
    directory = to_client(server.close_advertise())
    for c in ids:
        server.receive_share_package(to_server(clients[c].share_keys(directory)))
    server.close_share_keys()
    for c in ids:
        clients[c].receive_shares(to_client(server.share_inbox(c)))
        server.receive_masked_input(
            clients[c].mask_input(announce.index_set(), codes[c])
        )
    survivors = to_client(server.close_masked_input())
    for c in ids:
        server.receive_confirmation(to_server(clients[c].sign_survivors(survivors)))
    server.close_consistency()
    for c in ids:
        request = to_client(server.unmask_request(c))
        server.receive_unmask_response(to_server(clients[c].unmask(request)))

    # Assert
    total = server.recover().total
    expected = np.sum([codes[c].astype(np.int64) for c in ids], axis=0)
    np.testing.assert_array_equal(total, expected)


def test_ring_chunks_are_bit_packed_at_the_ring_width_and_checked() -> None:
    setup = RoundSetup(
        session_id=b"s", round_id=1, participants=("a", "b", "c"),
        graph_seed=bytes(32), value_bits=8,
    )  # fmt: skip
    ring = setup.ring()  # 10 bits
    values = np.array([1, 2, 3, (1 << 10) - 1, 0, 517], dtype=ring.dtype)
    payload = encode_ring_values(values, ring)
    assert len(payload) == 8  # ceil(6 x 10 / 8), not 12 bytes of uint16
    assert ring_values_per_chunk(ring, 1024) == 819
    check = RingChunkCheck(6, 1024, ring)
    np.testing.assert_array_equal(check.check(0, 0, 6, payload), values)
    with pytest.raises(InvalidUpdateError, match="expected 8"):
        RingChunkCheck(6, 1024, ring).check(0, 0, 6, payload + b"\0")
    dirty = payload[:-1] + bytes((payload[-1] | 0x80,))  # a padding bit set
    with pytest.raises(InvalidUpdateError, match="padding is not zero"):
        RingChunkCheck(6, 1024, ring).check(0, 0, 6, dirty)


def test_a_short_revealed_share_is_invalid() -> None:
    request = pb.SessionRequest()
    share = request.secagg_unmask.self_seed_shares.add()
    share.owner, share.x, share.y = "a", 1, b"\x01"
    with pytest.raises(InvalidUpdateError, match="33 bytes"):
        client_event_from_proto(request)


def _three_party_setup() -> tuple[RoundSetup, dict[str, PublicKey]]:
    keys = {c: PrivateKey.generate().public_key for c in ("a", "b", "c")}
    setup = RoundSetup(
        session_id=session_id(RUN, NONCE), round_id=ROUND, participants=("a", "b", "c"),
        graph_seed=bytes(32), value_bits=8,
        params=SecAggParams(degree=2, threshold=3),
    )  # fmt: skip
    return setup, keys


def _sparse(positions: list[int]) -> SecureRoundSetup:
    setup, keys = _three_party_setup()
    array = np.array(positions, dtype=np.uint64)
    return SecureRoundSetup(setup, keys, NONCE, FixedPointScale(0.5), array.size, array)


def test_the_setup_signature_covers_every_announced_parameter() -> None:
    # Arrange: a signed setup, as the coordinator sends it.
    coordinator = PrivateKey.generate()
    setup, keys = _three_party_setup()
    unsigned = SecureRoundSetup(setup, keys, NONCE, FixedPointScale(0.5), 9)
    signed = dataclasses.replace(
        unsigned, signature=coordinator.sign(unsigned.statement())
    )
    sparse = _sparse([3, 17, 400, 999])
    signed_sparse = dataclasses.replace(
        sparse, signature=coordinator.sign(sparse.statement())
    )

    reset = dataclasses.replace(unsigned, reset_residuals=True)
    signed_reset = dataclasses.replace(
        reset, signature=coordinator.sign(reset.statement())
    )

    # Act: through the wire, and with the clip or the reset flag changed in
    # transit (either way: a stripped reset flushes stale residuals, a forged
    # one drops every client's carried mass).
    received = to_client(signed)
    received_reset = to_client(signed_reset)
    received_sparse = to_client(signed_sparse)
    moved = np.array([3, 17, 401, 999], dtype=np.uint64)  # one position moved
    altered = [
        dataclasses.replace(received, scale=FixedPointScale(5.0)),
        dataclasses.replace(received, reset_residuals=True),
        dataclasses.replace(received_reset, reset_residuals=False),
        dataclasses.replace(received_sparse, positions=moved, coded_positions=b""),
    ]

    # Assert: the positions arrive gap-coded, decode to the signed set, and
    # the signature binds them (the decoded set, not its coding).
    assert received_reset.reset_residuals
    assert not received.reset_residuals
    assert received_sparse.positions is not None
    np.testing.assert_array_equal(received_sparse.positions, sparse.positions)
    assert received_sparse.coded_positions == sparse.coded_positions
    assert len(sparse.coded_positions) < 4 * 8  # not raw uint64
    coordinator.public_key.verify(received.signature, received.statement())
    coordinator.public_key.verify(received_reset.signature, received_reset.statement())
    coordinator.public_key.verify(
        received_sparse.signature, received_sparse.statement()
    )
    for setup_in_transit in altered:
        with pytest.raises(BadSignatureError):
            coordinator.public_key.verify(
                setup_in_transit.signature, setup_in_transit.statement()
            )


@pytest.mark.parametrize(
    ("coded", "count", "detail"),
    [
        (b"", 4, "empty"),  # no header byte
        (b"\x7f" + bytes(4), 4, "not a known coding"),  # varint with a width
        (None, 5, "expected"),  # fewer positions than announced
        (None, 2_000, "2000 positions for a model of 1000"),
        (b"\x0b" + (1_500).to_bytes(6, "little"), 4, "exceeds count"),  # w = 11
    ],
)
def test_a_malformed_coded_index_set_is_refused_at_the_wire(
    coded: bytes | None, count: int, detail: str
) -> None:
    # Arrange: a sparse setup whose coded set or count was corrupted.
    message = server_event(ROUND, _sparse([3, 17, 400, 999]))
    setup = message.secagg_setup
    if coded is not None:
        setup.coded_positions = coded
    setup.num_positions = count

    # Act / Assert: refused as INVALID_ARGUMENT, never a crash or a bad array.
    with pytest.raises(InvalidUpdateError, match=detail):
        server_event_from_proto(message, RUN, MODEL)
