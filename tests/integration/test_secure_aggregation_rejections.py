"""Secure aggregation's refusals, through real stubs: in-band codes, then it goes on.

A raw-stub client (no fedgrpc client code, real crypto from `fedgrpc.secagg`)
takes part in a round with real DiLoCoClients and misbehaves; the
coordinator must answer with a `SecAggRejection` carrying the status code
and an actionable message, keep its Session open, and finish the next round.
"""

from __future__ import annotations

import dataclasses
import queue
from collections.abc import Callable, Iterator

import grpc
import pytest
from structlog.testing import capture_logs

from fedgrpc._proto.v1 import common_pb2
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.secagg import ClientRound, ConsistencySignature, KeyDirectory
from fedgrpc.wire.secagg import client_event, server_event_from_proto, setup_from_proto
from tests.helpers.raw import PB, Joined, join, stub, tiny_spec
from tests.helpers.secure import close_all, config, connect, secure_mode_of, sync_all


@pytest.fixture
def coordinator(request: pytest.FixtureRequest) -> Iterator[CoordinatorThread]:
    with serve_in_thread(config(**getattr(request, "param", {}))) as running:
        yield running


def test_a_client_that_cannot_mask_is_refused_at_join(
    coordinator: CoordinatorThread,
) -> None:
    channel, service = stub(coordinator.address)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            join(service, tiny_spec(), codecs=(common_pb2.CODEC_DENSE,))
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "CODEC_SECAGG_RING" in (refused.value.details() or "")
    finally:
        channel.close()


class RawSession:
    """A Session stream driven by hand: a joined raw-stub client, no fedgrpc client."""

    def __init__(self, joined: Joined) -> None:
        self.joined = joined
        self._requests: queue.Queue[PB.SessionRequest | None] = queue.Queue()
        opening = PB.SessionOpen(
            client_id=joined.client_id, session_token=joined.session_token
        )
        self._requests.put(PB.SessionRequest(open=opening))
        self._responses = joined.service.Session(
            iter(self._requests.get, None), timeout=60
        )

    def send(self, request: PB.SessionRequest) -> None:
        self._requests.put(request)

    def next_event(self, kind: str) -> PB.SessionResponse:
        """The next `kind` response (others skipped); the call's timeout bounds it."""
        for response in self._responses:
            if response.WhichOneof("event") == kind:
                return response
        raise AssertionError(f"the Session ended before a {kind} event")

    def close(self) -> None:
        self._requests.put(None)
        self._responses.cancel()


def _bad_advertisement(raw: RawSession, machine: ClientRound, round_id: int) -> None:
    advert = machine.advertise()
    forged = dataclasses.replace(advert, signature=bytes(64))
    raw.send(client_event(round_id, forged))


def _old_layout_advertisement(
    raw: RawSession, machine: ClientRound, round_id: int
) -> None:
    # What a client predating keystream layout 2 sends: no keystream_layout.
    request = client_event(round_id, machine.advertise())
    request.secagg_advertise.ClearField("keystream_layout")
    raw.send(request)


def _tampered_shares(raw: RawSession, machine: ClientRound, round_id: int) -> None:
    raw.send(client_event(round_id, machine.advertise()))
    keys = raw.next_event("secagg_keys")
    decoded = server_event_from_proto(keys, raw.joined.run_id, 0)  # not a setup
    assert decoded is not None
    directory = decoded[1]
    assert isinstance(directory, KeyDirectory)
    package = machine.share_keys(directory)
    first = package.sealed[0]
    cut = dataclasses.replace(first, envelope=first.envelope[:-1])
    raw.send(client_event(round_id, dataclasses.replace(
        package, sealed=(cut, *package.sealed[1:]))))  # fmt: skip


def _out_of_phase(raw: RawSession, machine: ClientRound, round_id: int) -> None:
    confirmation = ConsistencySignature(raw.joined.client_id, bytes(64))
    raw.send(client_event(round_id, confirmation))


@pytest.mark.parametrize(
    ("misbehave", "code", "detail"),
    [
        (_bad_advertisement, grpc.StatusCode.PERMISSION_DENIED, "signature"),
        (_tampered_shares, grpc.StatusCode.INVALID_ARGUMENT, "envelope"),
        (_out_of_phase, grpc.StatusCode.FAILED_PRECONDITION, "consistency"),
        (
            _old_layout_advertisement,
            grpc.StatusCode.FAILED_PRECONDITION,
            "masks with keystream layout 1 (one AES block per position), but this "
            "round uses layout 2",
        ),
    ],
)
def test_a_refused_secagg_message_is_rejected_in_band_and_the_next_round_works(
    coordinator: CoordinatorThread,
    misbehave: Callable[[RawSession, ClientRound, int], None],
    code: grpc.StatusCode,
    detail: str,
) -> None:
    # Arrange: two real clients, then a raw-stub client completes the three
    # participants of round 1 and receives its setup.
    clients = connect(coordinator.address, 2)
    mode = secure_mode_of(coordinator)
    spec = mode.engine.model.require_spec()
    channel, service = stub(coordinator.address)
    codecs = (common_pb2.CODEC_DENSE, common_pb2.CODEC_SECAGG_RING)
    raw = RawSession(join(service, spec, codecs=codecs))
    try:
        setup_event = raw.next_event("secagg_setup")
        announce = setup_from_proto(
            setup_event.secagg_setup, raw.joined.run_id, spec.num_coordinates
        )
        setup = announce.setup
        machine = ClientRound(
            setup, raw.joined.client_id, raw.joined.key, announce.identities
        )

        # Act: the raw client misbehaves.
        misbehave(raw, machine, setup.round_id)
        rejection = raw.next_event("secagg_rejection").secagg_rejection

        # Assert: the status code and an actionable message arrive in-band ...
        assert rejection.round_id == setup.round_id
        assert rejection.code == code.value[0]
        assert detail in rejection.message
        # ... round 1 cannot reach its threshold without the raw client and is
        # skipped; with a third real client the next round is applied.
        raw.close()
        clients.extend(connect(coordinator.address, 1, seed=5))
        outcomes = sync_all(clients, seed=4)
        # A round the coordinator set up while the raw client was leaving
        # (still connected) aborts too; the next one, with three honest
        # participants, must apply. Bounded: two more sync points at most.
        for seed in (6, 7):
            if outcomes != ["applied"] * 3:
                outcomes = sync_all(clients, seed=seed)
        assert outcomes == ["applied"] * 3
        assert "threshold" in mode.engine.history[0].reason
    finally:
        raw.close()
        channel.close()
        close_all(clients)


def test_a_tampered_share_makes_its_recipient_leave_and_the_round_skip(
    coordinator: CoordinatorThread,
) -> None:
    # Arrange: two real clients and a raw one that seals correctly sized but
    # altered shares (the coordinator cannot tell: only the recipient can).
    clients = connect(coordinator.address, 2)
    mode = secure_mode_of(coordinator)
    channel, service = stub(coordinator.address)
    codecs = (common_pb2.CODEC_DENSE, common_pb2.CODEC_SECAGG_RING)
    spec = mode.engine.model.require_spec()
    raw = RawSession(join(service, spec, codecs=codecs))
    try:
        announce = setup_from_proto(
            raw.next_event("secagg_setup").secagg_setup,
            raw.joined.run_id,
            spec.num_coordinates,
        )
        setup = announce.setup
        machine = ClientRound(
            setup, raw.joined.client_id, raw.joined.key, announce.identities
        )
        raw.send(client_event(setup.round_id, machine.advertise()))
        keys = raw.next_event("secagg_keys")
        decoded = server_event_from_proto(keys, "", spec.num_coordinates)
        assert decoded is not None
        assert isinstance(decoded[1], KeyDirectory)
        package = machine.share_keys(decoded[1])
        flipped = [
            dataclasses.replace(s, envelope=bytes([s.envelope[0] ^ 1]) + s.envelope[1:])
            for s in package.sealed
        ]

        # Act: the altered shares go out; then both real clients sync.
        with capture_logs() as logs:
            raw.send(client_event(setup.round_id, dataclasses.replace(
                package, sealed=tuple(flipped))))  # fmt: skip
            raw.next_event("secagg_inbox")  # the coordinator relayed them all
            raw.close()
            outcomes = sync_all(clients, seed=1)

        # Assert: both real clients refused the altered shares and revealed
        # nothing; the round was skipped with its reason.
        assert outcomes == ["missed", "missed"]
        left = [e for e in logs if e["event"] == "secagg_round_left"]
        assert len(left) == 2
        assert all("tampered_share" in e["kind"] for e in left)
        assert "secure aggregation aborted" in mode.engine.history[0].reason
    finally:
        raw.close()
        channel.close()
        close_all(clients)
