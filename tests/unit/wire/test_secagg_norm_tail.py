"""The chunk-norm tail of a round setup (SecAggRoundSetup fields 60-61) on the wire."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.errors import BadSignatureError, ConfigError, InvalidUpdateError
from fedgrpc.secagg import FixedPointScale, RoundSetup
from fedgrpc.secagg.graph import SecAggParams
from fedgrpc.wire.secagg import (
    SecureRoundSetup,
    server_event,
    server_event_from_proto,
    session_id,
)
from fedgrpc.wire.secagg_setup import NORM_TAIL_BASE

RUN, NONCE, ROUND = "run-1", b"n" * 16, 7
MODEL = 1_000  # the receiving client's model: 16 chunks of 64


def _setup(norm_chunk: int = 64, norm_tail: int = 16) -> SecureRoundSetup:
    keys = {c: PrivateKey.generate().public_key for c in ("a", "b", "c")}
    setup = RoundSetup(
        session_id=session_id(RUN, NONCE), round_id=ROUND, participants=("a", "b", "c"),
        graph_seed=bytes(32), value_bits=8,
        params=SecAggParams(degree=2, threshold=3),
    )  # fmt: skip
    positions = np.array([3, 17, 400, 999], dtype=np.uint64)
    return SecureRoundSetup(setup, keys, NONCE, FixedPointScale(0.5), 4, positions,
                            norm_chunk=norm_chunk, norm_tail=norm_tail)  # fmt: skip


def _through_the_wire(
    announce: SecureRoundSetup, model: int = MODEL
) -> SecureRoundSetup:
    wire = pb.SessionResponse.FromString(
        server_event(ROUND, announce).SerializeToString()
    )
    decoded = server_event_from_proto(wire, RUN, model)
    assert decoded is not None
    assert isinstance(decoded[1], SecureRoundSetup)
    return decoded[1]


def test_the_tail_travels_is_signed_and_is_masked_above_every_coordinate() -> None:
    coordinator = PrivateKey.generate()
    announce = _setup()
    signed = dataclasses.replace(
        announce, signature=coordinator.sign(announce.statement())
    )

    received = _through_the_wire(signed)

    assert (received.norm_chunk, received.norm_tail) == (64, 16)
    assert received.vector_length == 4 + 16
    positions = received.mask_positions()
    np.testing.assert_array_equal(positions[:4], [3, 17, 400, 999])
    np.testing.assert_array_equal(positions[4:], NORM_TAIL_BASE + np.arange(16))
    coordinator.public_key.verify(received.signature, received.statement())
    for stripped in (
        dataclasses.replace(received, norm_chunk=0, norm_tail=0),
        dataclasses.replace(received, norm_chunk=128, norm_tail=8),
    ):
        with pytest.raises(BadSignatureError):
            coordinator.public_key.verify(stripped.signature, stripped.statement())
    plain = _setup(0, 0)
    assert plain.vector_length == 4
    np.testing.assert_array_equal(plain.mask_positions(), plain.index_set())


def test_a_tail_that_does_not_fit_the_clients_model_is_refused() -> None:
    with pytest.raises(InvalidUpdateError, match="has 17"):
        _through_the_wire(_setup(), model=1_030)  # ceil(1030 / 64) = 17, not 16
    with pytest.raises(ConfigError, match="norm_tail"):
        _setup(64, 0)
