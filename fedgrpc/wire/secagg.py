"""Secure-aggregation messages <-> their Session-stream protos, and ring chunks.

On the data path this is the wire edge of `fedgrpc.secagg`: the state
machines there consume and produce typed messages (`secagg.messages`); this
module converts each one 1:1 to the `SecAgg*` protos of
secure_aggregation.proto and wraps them in SessionRequest / SessionResponse
(the masked update's chunks are `wire.ring`'s, the round setup and its
signed statement `wire.secagg_setup`'s, re-exported here). No grpc: the coordinator and
client carry what this module builds.

Decoding never trusts sizes: malformed fields raise `InvalidUpdateError`
(INVALID_ARGUMENT), so a peer's garbage never reaches the state machines.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc._proto.v1 import secure_aggregation_pb2 as sa
from fedgrpc.errors import InvalidUpdateError
from fedgrpc.secagg import shamir
from fedgrpc.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    KeyDirectory,
    SealedShare,
    ShareInbox,
    SharePackage,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
)
from fedgrpc.secagg.prg import LEGACY_LAYOUT
from fedgrpc.wire.secagg_setup import (
    SecureRoundSetup,
    session_id,
    setup_from_proto,
    setup_to_proto,
)

__all__ = (
    "ClientPayload",
    "Rejection",
    "SecureRoundSetup",
    "ServerPayload",
    "client_event",
    "client_event_from_proto",
    "server_event",
    "server_event_from_proto",
    "session_id",
    "setup_from_proto",
    "setup_to_proto",
)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused secure-aggregation message: numeric gRPC status and why."""

    round_id: int
    code: int
    message: str


ServerPayload = (
    SecureRoundSetup | KeyDirectory | ShareInbox | SurvivorList | UnmaskRequest
) | Rejection
ClientPayload = AdvertiseKeys | SharePackage | ConsistencySignature | UnmaskResponse


def _advert_to_proto(a: AdvertiseKeys, round_id: int) -> sa.SecAggAdvertiseKeys:
    return sa.SecAggAdvertiseKeys(
        round_id=round_id,
        client_id=a.client,
        encryption_key=a.encryption_key,
        mask_key=a.mask_key,
        signature=a.signature,
        keystream_layout=a.keystream_layout,
    )


def _advert(m: sa.SecAggAdvertiseKeys) -> AdvertiseKeys:
    # 0 (unset): a client predating the field, which masks with layout 1.
    layout = m.keystream_layout or LEGACY_LAYOUT
    return AdvertiseKeys(m.client_id, m.encryption_key, m.mask_key, m.signature, layout)


def _sealed_to_proto(items: tuple[SealedShare, ...]) -> list[sa.SecAggSealedShare]:
    return [sa.SecAggSealedShare(sender=s.sender, recipient=s.recipient,
                                 envelope=s.envelope) for s in items]  # fmt: skip


def _sealed(items: list[sa.SecAggSealedShare]) -> tuple[SealedShare, ...]:
    return tuple(SealedShare(s.sender, s.recipient, s.envelope) for s in items)


def _consistency_to_proto(
    c: ConsistencySignature, round_id: int
) -> sa.SecAggConsistencySignature:
    return sa.SecAggConsistencySignature(
        round_id=round_id, client_id=c.client, signature=c.signature
    )


def _shares_to_proto(
    items: tuple[tuple[str, shamir.Share], ...],
) -> list[sa.SecAggShare]:
    return [
        sa.SecAggShare(owner=o, x=s.x, y=s.y.to_bytes(shamir.ELEMENT_BYTES, "big"))
        for o, s in items
    ]


def _shares(items: list[sa.SecAggShare]) -> tuple[tuple[str, shamir.Share], ...]:
    if any(len(s.y) != shamir.ELEMENT_BYTES for s in items):
        raise InvalidUpdateError(
            f"a revealed share must be {shamir.ELEMENT_BYTES} bytes (big-endian)"
        )
    return tuple((s.owner, shamir.Share(s.x, int.from_bytes(s.y, "big")))
                 for s in items)  # fmt: skip


def server_event(round_id: int, payload: ServerPayload) -> pb.SessionResponse:
    """A coordinator -> client message as the SessionResponse that carries it."""
    if isinstance(payload, SecureRoundSetup):
        return pb.SessionResponse(secagg_setup=setup_to_proto(payload))
    if isinstance(payload, KeyDirectory):
        adverts = [_advert_to_proto(a, round_id) for a in payload.advertisements]
        keys = sa.SecAggKeyDirectory(round_id=round_id, advertisements=adverts)
        return pb.SessionResponse(secagg_keys=keys)
    if isinstance(payload, ShareInbox):
        sealed = _sealed_to_proto(payload.sealed)
        inbox = sa.SecAggShareInbox(
            round_id=round_id, recipient=payload.recipient, sealed=sealed
        )
        return pb.SessionResponse(secagg_inbox=inbox)
    if isinstance(payload, SurvivorList):
        survivors = sa.SecAggSurvivorList(
            round_id=round_id,
            survivors=list(payload.survivors),
            server_signature=payload.server_signature or b"",
        )
        return pb.SessionResponse(secagg_survivors=survivors)
    if isinstance(payload, UnmaskRequest):
        request = sa.SecAggUnmaskRequest(
            round_id=round_id,
            recipient=payload.recipient,
            survivors=list(payload.survivors),
            signatures=[_consistency_to_proto(c, round_id) for c in payload.signatures],
        )
        return pb.SessionResponse(secagg_unmask_request=request)
    rejection = sa.SecAggRejection(
        round_id=round_id, code=payload.code, message=payload.message
    )
    return pb.SessionResponse(secagg_rejection=rejection)


def server_event_from_proto(
    response: pb.SessionResponse, run_id: str, num_coordinates: int
) -> tuple[int, ServerPayload] | None:
    """(round, payload) of a secure-aggregation SessionResponse; None otherwise.

    `num_coordinates` is the client's model size, which a setup's positions
    must stay below. Raises `InvalidUpdateError` for a malformed setup.
    """
    kind = response.WhichOneof("event")
    if kind == "secagg_setup":
        m = response.secagg_setup
        return m.round_id, setup_from_proto(m, run_id, num_coordinates)
    if kind == "secagg_keys":
        k = response.secagg_keys
        return k.round_id, KeyDirectory(tuple(_advert(a) for a in k.advertisements))
    if kind == "secagg_inbox":
        i = response.secagg_inbox
        return i.round_id, ShareInbox(i.recipient, _sealed(list(i.sealed)))
    if kind == "secagg_survivors":
        s = response.secagg_survivors
        signature = s.server_signature or None
        return s.round_id, SurvivorList(tuple(s.survivors), signature)
    if kind == "secagg_unmask_request":
        u = response.secagg_unmask_request
        sigs = tuple(ConsistencySignature(c.client_id, c.signature)
                     for c in u.signatures)  # fmt: skip
        return u.round_id, UnmaskRequest(u.recipient, tuple(u.survivors), sigs)
    if kind == "secagg_rejection":
        r = response.secagg_rejection
        return r.round_id, Rejection(r.round_id, r.code, r.message)
    return None


def client_event(round_id: int, payload: ClientPayload) -> pb.SessionRequest:
    """A client -> coordinator message as the SessionRequest that carries it."""
    if isinstance(payload, AdvertiseKeys):
        return pb.SessionRequest(secagg_advertise=_advert_to_proto(payload, round_id))
    if isinstance(payload, SharePackage):
        sealed = _sealed_to_proto(payload.sealed)
        package = sa.SecAggSharePackage(
            round_id=round_id, sender=payload.sender, sealed=sealed
        )
        return pb.SessionRequest(secagg_shares=package)
    if isinstance(payload, ConsistencySignature):
        return pb.SessionRequest(
            secagg_consistency=_consistency_to_proto(payload, round_id)
        )
    response = sa.SecAggUnmaskResponse(
        round_id=round_id,
        client_id=payload.client,
        mask_key_shares=_shares_to_proto(payload.mask_key_shares),
        self_seed_shares=_shares_to_proto(payload.self_seed_shares),
    )
    return pb.SessionRequest(secagg_unmask=response)


def client_event_from_proto(
    request: pb.SessionRequest,
) -> tuple[int, str, ClientPayload] | None:
    """(round, claimed sender, payload) of a secure-aggregation SessionRequest.

    None for any other event. Raises `InvalidUpdateError` for malformed shares.
    """
    kind = request.WhichOneof("event")
    if kind == "secagg_advertise":
        a = request.secagg_advertise
        return a.round_id, a.client_id, _advert(a)
    if kind == "secagg_shares":
        p = request.secagg_shares
        return p.round_id, p.sender, SharePackage(p.sender, _sealed(list(p.sealed)))
    if kind == "secagg_consistency":
        c = request.secagg_consistency
        return c.round_id, c.client_id, ConsistencySignature(c.client_id, c.signature)
    if kind == "secagg_unmask":
        u = request.secagg_unmask
        response = UnmaskResponse(
            u.client_id,
            _shares(list(u.mask_key_shares)),
            _shares(list(u.self_seed_shares)),
        )
        return u.round_id, u.client_id, response
    return None
