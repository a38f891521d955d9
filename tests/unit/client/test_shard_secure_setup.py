"""A shard's participant takes only dense rounds over exactly its own range.

Under parameter sharding every shard runs a masked round over its range,
and the client holds one participant per shard, sized to that range
(`client.secure.mode`). A dense setup over another number of coordinates
(a shard announcing another shard's range, or the whole model) must make
the client leave that round before it advertises any key. No gRPC: the
participant gets the SessionResponse the coordinator would send.
"""

from __future__ import annotations

import dataclasses
import os

from structlog.testing import capture_logs

from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.client.connection.join import Federation
from fedgrpc.client.secure import SecureMode
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.domain.codecs import parse_codec
from fedgrpc.secagg import FixedPointScale, RoundSetup, SecAggParams
from fedgrpc.wire.secagg import SecureRoundSetup, server_event, session_id

RUN, NONCE, ROUND = "run-1", b"n" * 16, 3
BOUNDS = (0, 2040, 4860)
"""Two shards: 2,040 and 2,820 coordinates."""


def _dense_setup(coordinator: PrivateKey, me: str, count: int) -> pb.SessionResponse:
    ids = tuple(sorted((me, "b", "c")))
    keys = {c: PrivateKey.generate().public_key for c in ids}
    setup = RoundSetup(
        session_id=session_id(RUN, NONCE), round_id=ROUND, participants=ids,
        graph_seed=os.urandom(32), value_bits=8,
        params=SecAggParams(degree=2, threshold=3),
    )  # fmt: skip
    announce = SecureRoundSetup(setup, keys, NONCE, FixedPointScale(0.5), count)
    announce = dataclasses.replace(
        announce, signature=coordinator.sign(announce.statement())
    )
    return server_event(ROUND, announce)


def _federation(coordinator: PrivateKey, shard: int) -> Federation:
    return Federation(
        run_id=RUN, inner_steps=1, chunk_bytes=1024, model_version=0,
        seed_model=False, codec=parse_codec("dense:int8"), feedback_decay=1.0,
        coordinator_key=coordinator.public_key, round_nonce=NONCE, signed=True,
        secure_aggregation=True, shard_index=shard, shard_bounds=BOUNDS,
        shard_peers=("127.0.0.1:1", "127.0.0.1:2"),
    )  # fmt: skip


class _Link:
    """What `SecureMode.attach` reads of a link: its key, id and sender."""

    def __init__(self, sent: list[pb.SessionRequest]) -> None:
        self.identity = dataclasses.make_dataclass("I", ["key"])(PrivateKey.generate())
        self.credentials = dataclasses.make_dataclass("C", ["client_id"])("a")
        self.send_event = sent.append


def test_the_mode_sizes_one_encoder_per_shard_range() -> None:
    mode = SecureMode(_federation(PrivateKey.generate(), 0), 4860, wait_s=1.0)
    assert [u.feedback.residual.size for u in mode.range_updates] == [2040, 2820]


async def test_a_dense_setup_over_another_shards_range_is_left_unanswered() -> None:
    # Arrange: the client's participant for shard 1 (2,820 coordinates).
    coordinator = PrivateKey.generate()
    federation = _federation(coordinator, 1)
    mode = SecureMode(federation, 4860, wait_s=1.0)
    sent: list[pb.SessionRequest] = []
    participant = mode.attach(_Link(sent), federation)  # type: ignore[arg-type]
    assert participant is not None
    assert mode.participants[1] is participant

    # Act: shard 1 announces a dense round over shard 0's 2,040 positions.
    with capture_logs() as logs:
        await participant.handle(_dense_setup(coordinator, "a", 2040))
        settled = await participant.wait_ready(ROUND, timeout_s=0.5)

    # Assert: no key advertised, the round left, the reason names both sizes.
    assert sent == []
    assert settled is None
    assert ROUND in participant.excluded
    [event] = [e for e in logs if e["event"] == "secagg_round_left"]
    assert "announces 2040 positions" in event["reason"]
    assert "has 2820 coordinates" in event["reason"]


async def test_a_dense_setup_over_exactly_the_shards_range_is_joined() -> None:
    coordinator = PrivateKey.generate()
    federation = _federation(coordinator, 1)
    mode = SecureMode(federation, 4860, wait_s=1.0)
    sent: list[pb.SessionRequest] = []
    participant = mode.attach(_Link(sent), federation)  # type: ignore[arg-type]
    assert participant is not None

    await participant.handle(_dense_setup(coordinator, "a", 2820))

    assert participant.rounds[ROUND].error is None
    assert [r.WhichOneof("event") for r in sent] == ["secagg_advertise"]
