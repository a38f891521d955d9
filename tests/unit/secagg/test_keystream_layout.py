"""Keystream layout 2 end to end: dense and sparse rounds, dropouts, wide rings,
and the refusal of layout 1 on both sides of the wire."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.errors import IncompatibleClientError, InvalidUpdateError
from fedgrpc.secagg import AdvertiseKeys, FixedPointScale, RoundSetup, SecAggParams
from fedgrpc.secagg.prg import KEYSTREAM_LAYOUT, LEGACY_LAYOUT
from fedgrpc.wire.secagg import (
    SecureRoundSetup,
    client_event,
    client_event_from_proto,
    server_event,
    server_event_from_proto,
    session_id,
)
from tests.unit.secagg._federation import Federation, make_setup, random_codes

RUN, NONCE, ROUND = "run-layout", bytes(range(16)), 1


def _plain_sum(codes: dict[str, np.ndarray], survivors: tuple[str, ...]) -> np.ndarray:
    total: np.ndarray = np.sum([codes[c].astype(np.int64) for c in survivors], axis=0)
    return total


@pytest.mark.parametrize(
    ("ring_bits", "positions"),
    [
        (0, np.arange(3_001)),  # dense, an 11-bit ring: 16-bit lanes, L = 8
        (0, np.arange(7, 2_007)),  # a run that starts mid-block
        (24, np.arange(1_000)),  # 32-bit lanes, L = 4
        (40, np.arange(999)),  # 64-bit lanes, L = 2
        (
            0,
            np.array([5, 6, 7, 8, 100, 10_000, 10_001, 2**33]),
        ),  # sparse, shared blocks
    ],
)
def test_dropouts_are_recovered_exactly_in_every_lane_width(
    ring_bits: int, positions: np.ndarray
) -> None:
    # Arrange: 8 clients, two of which drop after sharing keys (their pairwise
    # masks must be rebuilt and stripped through the same kernel).
    setup = dataclasses.replace(make_setup(8), ring_bits=ring_bits)
    federation = Federation(setup, positions)
    codes = random_codes(setup.participants, positions.size, 8, seed=ring_bits)

    # Act
    result = federation.run(codes, drop_after_share=setup.participants[-2:])

    # Assert: exactly the six survivors' sum, in the ring's storage dtype.
    assert result.survivors == setup.participants[:6]
    assert result.ring_sum.dtype == setup.ring().dtype
    assert np.array_equal(result.total, _plain_sum(codes, result.survivors))


def _announce(layout: int = KEYSTREAM_LAYOUT) -> SecureRoundSetup:
    keys = {c: PrivateKey.generate().public_key for c in ("a", "b", "c")}
    setup = RoundSetup(
        session_id=session_id(RUN, NONCE), round_id=ROUND, participants=("a", "b", "c"),
        graph_seed=bytes(32), value_bits=8, params=SecAggParams(degree=2, threshold=3),
    )  # fmt: skip
    return SecureRoundSetup(
        setup, keys, NONCE, FixedPointScale(0.5), 10, keystream_layout=layout
    )


def test_the_setup_carries_layout_2_through_the_wire() -> None:
    message = server_event(ROUND, _announce())

    decoded = server_event_from_proto(message, RUN, 10)

    assert message.secagg_setup.keystream_layout == KEYSTREAM_LAYOUT == 2
    assert decoded is not None
    assert isinstance(decoded[1], SecureRoundSetup)
    assert decoded[1].keystream_layout == KEYSTREAM_LAYOUT


@pytest.mark.parametrize("layout", [0, LEGACY_LAYOUT, 3])
def test_a_client_refuses_a_setup_in_another_layout_naming_both(layout: int) -> None:
    # 0 is a coordinator that predates the field: it masks with layout 1.
    message = server_event(ROUND, _announce())
    message.secagg_setup.keystream_layout = layout

    with pytest.raises(InvalidUpdateError) as refused:
        server_event_from_proto(message, RUN, 10)

    text = str(refused.value)
    assert f"layout {layout or 1}" in text
    assert "this client masks with layout 2" in text


def test_an_advertisement_without_the_field_is_layout_1_and_refused() -> None:
    # Arrange: a real advertisement, sent as a client predating the field would.
    setup = make_setup(3)
    federation = Federation(setup, np.arange(10))
    advert = federation.clients[setup.participants[0]].advertise()
    request = client_event(ROUND, advert)
    request.secagg_advertise.ClearField("keystream_layout")
    wire = pb.SessionRequest.FromString(request.SerializeToString())

    # Act
    decoded = client_event_from_proto(wire)
    current = client_event_from_proto(client_event(ROUND, advert))

    # Assert: decoded as layout 1 and refused by name; layout 2 is accepted.
    assert decoded is not None
    assert current is not None
    old, new = decoded[2], current[2]
    assert isinstance(old, AdvertiseKeys)
    assert isinstance(new, AdvertiseKeys)
    assert old.keystream_layout == LEGACY_LAYOUT
    with pytest.raises(IncompatibleClientError, match=r"layout 1 .* uses layout 2"):
        federation.server.receive_advertisement(old)
    federation.server.receive_advertisement(new)
    for other in setup.participants[1:]:
        federation.server.receive_advertisement(federation.clients[other].advertise())
    directory = federation.server.close_advertise()
    assert directory.advertisements[0] == new
    assert {a.keystream_layout for a in directory.advertisements} == {2}
