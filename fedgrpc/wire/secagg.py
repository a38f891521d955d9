"""Secure-aggregation messages <-> their Session-stream protos, and ring chunks.

On the data path this is the wire edge of `fedgrpc.secagg`: the state
machines there consume and produce typed messages (`secagg.messages`); this
module converts each one 1:1 to the `SecAgg*` protos of
secure_aggregation.proto and wraps them in SessionRequest / SessionResponse
(the masked update's chunks are `wire.ring`'s). No grpc: the coordinator and
client carry what this module builds.

Decoding never trusts sizes: malformed fields raise `InvalidUpdateError`
(INVALID_ARGUMENT), so a peer's garbage never reaches the state machines.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import torch

from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc._proto.v1 import secure_aggregation_pb2 as sa
from fedgrpc.compress.shared_index import decode_index_set, encode_index_set
from fedgrpc.crypto.keys import PublicKey
from fedgrpc.errors import InvalidUpdateError
from fedgrpc.secagg import shamir, transcript
from fedgrpc.secagg.fixed_point import FixedPointScale
from fedgrpc.secagg.graph import SecAggParams
from fedgrpc.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    KeyDirectory,
    RoundSetup,
    SealedShare,
    ShareInbox,
    SharePackage,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
)
from fedgrpc.wire.signed import key_from_proto, key_to_proto

SETUP_DOMAIN = transcript.DOMAIN_PREFIX + b"round-setup"


def session_id(run_id: str, round_nonce: bytes) -> bytes:
    """The SecAgg session id: UTF-8 run id, then the round's 16-byte nonce.

    Binding the nonce makes a restarted run's reopened round (same id, new
    nonce) a different session, so no key, share or signature carries over.
    """
    return run_id.encode() + round_nonce


@dataclass(frozen=True, slots=True)
class SecureRoundSetup:
    """The coordinator's announcement of one masked round (SecAggRoundSetup)."""

    setup: RoundSetup
    """Participants, graph seed, ring width; every party derives the same."""
    identities: dict[str, PublicKey]
    """Participant -> identity key from Join; verifies its advertisement."""
    round_nonce: bytes
    scale: FixedPointScale
    """Round-wide clip and value bits (codes are value_bits wide)."""
    num_positions: int
    positions: np.ndarray | None = None
    """uint64 index set; None means dense (every coordinate, in order)."""
    coded_positions: bytes = b""
    """`positions` gap-coded as sent (`encode_index_set`); b"" when dense.

    Left empty, it is coded from `positions` at construction: the
    coordinator passes the bytes its planner already coded off the event
    loop (coding 1M positions takes ~50 ms), so no setup codes them twice.
    """
    signature: bytes = b""
    """The coordinator's signature over `statement()`."""
    reset_residuals: bool = False
    """Clients zero their error-feedback residual first (after a guard trip)."""

    def __post_init__(self) -> None:
        """Code `positions` once if the caller did not (tests, benches)."""
        if self.positions is not None and not self.coded_positions:
            coded = encode_index_set(torch.from_numpy(self.positions.astype(np.int64)))
            object.__setattr__(self, "coded_positions", coded)  # frozen: set once

    def statement(self) -> bytes:
        """The bytes the coordinator signs (secure_aggregation.proto's layout).

        `reset_residuals` adds a last framed byte only when set: every other
        setup signs as before, so clients predating the flag still verify
        them, and refuse (rather than silently ignore) a reset they cannot do.
        The positions are signed decoded (uint64), not as coded: the
        signature binds the set itself, so a client that decodes the coded
        bytes to anything else than what was signed refuses the setup.
        """
        setup, graph = self.setup, self.setup.graph()
        ids = setup.participants
        head = transcript.round_context(SETUP_DOMAIN, setup.session_id, setup.round_id)
        positions = (
            b"" if self.positions is None else self.positions.astype("<u8").tobytes()
        )
        reset = (b"\x01",) if self.reset_residuals else ()
        return head + transcript.id_list(ids) + transcript.frame(
            *(self.identities[c].raw for c in ids),
            setup.graph_seed,
            *(transcript.u64(v) for v in (graph.degree, graph.threshold,
                                          setup.value_bits, self.num_positions)),
            struct.pack(">d", self.scale.clip),
            positions,
            *reset,
        )  # fmt: skip

    def index_set(self) -> np.ndarray:
        """The announced positions as uint64 (0..n-1 when dense)."""
        if self.positions is not None:
            return self.positions
        return np.arange(self.num_positions, dtype=np.uint64)


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


def setup_to_proto(announce: SecureRoundSetup) -> sa.SecAggRoundSetup:
    """Encode a round setup; degree and threshold are sent explicitly."""
    setup = announce.setup
    graph = setup.graph()
    return sa.SecAggRoundSetup(
        round_id=setup.round_id,
        round_nonce=announce.round_nonce,
        participants=[
            sa.SecAggParticipant(client_id=c, identity_key=key_to_proto(k))
            for c, k in sorted(announce.identities.items())
        ],
        graph_seed=setup.graph_seed,
        degree=graph.degree,
        threshold=graph.threshold,
        value_bits=setup.value_bits,
        clip=announce.scale.clip,
        dense=announce.positions is None,
        coded_positions=announce.coded_positions,
        num_positions=announce.num_positions,
        coordinator_signature=announce.signature,
        reset_residuals=announce.reset_residuals,
    )


def setup_from_proto(
    message: sa.SecAggRoundSetup, run_id: str, num_coordinates: int
) -> SecureRoundSetup:
    """Decode a round setup (the client's view of a model of `num_coordinates`).

    Raises:
        InvalidUpdateError: malformed participants, keys, graph or scale, or
            an index set that is not exactly num_positions increasing
            positions below `num_coordinates` (the client leaves the round).
    """
    try:
        identities = {p.client_id: key_from_proto(p.identity_key)
                      for p in message.participants}  # fmt: skip
        positions = _positions(message, num_coordinates)
        params = SecAggParams(degree=message.degree, threshold=message.threshold)
        setup = RoundSetup(
            session_id=session_id(run_id, message.round_nonce),
            round_id=message.round_id,
            participants=tuple(p.client_id for p in message.participants),
            graph_seed=message.graph_seed,
            value_bits=message.value_bits,
            params=params,
        )
        scale = FixedPointScale(message.clip, message.value_bits)
    except (ValueError, KeyError) as exc:  # ConfigError is a ValueError
        raise InvalidUpdateError(f"malformed secure-aggregation setup: {exc}") from exc
    return SecureRoundSetup(
        setup,
        identities,
        message.round_nonce,
        scale,
        message.num_positions,
        positions,
        message.coded_positions,
        message.coordinator_signature,
        message.reset_residuals,
    )


def _positions(message: sa.SecAggRoundSetup, num_coordinates: int) -> np.ndarray | None:
    """The decoded sparse set as uint64, or None when dense.

    k is checked against the model first: it bounds what decoding may
    allocate (a zstd body up to 5k bytes), and the signature is checked
    only after decoding, so these bytes are not yet trusted.
    """
    if message.dense:
        return None
    k = message.num_positions
    if k > num_coordinates:
        raise InvalidUpdateError(
            f"the setup announces {k} positions for a model of {num_coordinates} "
            "coordinates"
        )
    decoded = decode_index_set(message.coded_positions, k, num_coordinates)
    return decoded.numpy().astype(np.uint64)


def _advert_to_proto(a: AdvertiseKeys, round_id: int) -> sa.SecAggAdvertiseKeys:
    return sa.SecAggAdvertiseKeys(
        round_id=round_id,
        client_id=a.client,
        encryption_key=a.encryption_key,
        mask_key=a.mask_key,
        signature=a.signature,
    )


def _advert(m: sa.SecAggAdvertiseKeys) -> AdvertiseKeys:
    return AdvertiseKeys(m.client_id, m.encryption_key, m.mask_key, m.signature)


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
