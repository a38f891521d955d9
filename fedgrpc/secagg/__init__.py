"""Secure aggregation: the coordinator learns the sum of the clients' codes, not one.

A leaf of the data path (model -> compress -> wire (+ crypto signature,
+ **secagg mask**) -> gRPC -> aggregate -> optim): numpy and `cryptography`
only, no gRPC, no protobuf, no I/O. It implements SecAgg+ (Bell et al. 2020)
on top of Bonawitz et al. 2017, as DESIGN.md step 4 describes:

- `ring`: Z_2^(b + ceil(log2 n)), where n summed b-bit codes cannot overflow;
- `fixed_point`: one round-wide clip/scale, stochastic rounding, clip counts;
- `prg`: AES-256-CTR masks at the announced positions only, O(k) per seed;
- `agreement`: per-round X25519 keys signed by the client identity, HKDF
  seeds bound to session, round and pair;
- `shamir`, `sealing`: t-of-n shares of both secrets, AES-GCM to each
  neighbour through the coordinator;
- `graph`: complete graph for small n, random Harary graph above;
- `client_round`, `server_round`: the phases as state machines over the
  typed `messages`, which the gRPC integration only carries.

Typical use, per round (the integration moves each message across)::

    setup = RoundSetup(session_id=..., round_id=r, participants=ids,
                       graph_seed=seed, value_bits=8)
    client = ClientRound(setup, me, identity_key, peer_public_keys)
    server = ServerRound(setup, index_set, identities=peer_public_keys)
    server.receive_advertisement(client.advertise());  d = server.close_advertise()
    server.receive_share_package(client.share_keys(d)); server.close_share_keys()
    client.receive_shares(server.share_inbox(me))
    server.receive_masked_input(client.mask_input(index_set, codes))
    sig = client.sign_survivors(server.close_masked_input())
    server.receive_confirmation(sig);                   server.close_consistency()
    server.receive_unmask_response(client.unmask(server.unmask_request(me)))
    total = server.recover().total                  # sum of survivors' codes
"""

from __future__ import annotations

from fedgrpc.secagg.agreement import SignatureVerifier, Signer
from fedgrpc.secagg.client_round import ClientRound
from fedgrpc.secagg.errors import (
    AbortReason,
    ConsistencyCheckError,
    InconsistentSharesError,
    PeerKeyError,
    PeerSignatureError,
    ProtocolViolationError,
    SecAggAbortError,
    TamperedShareError,
    TooFewClientsError,
)
from fedgrpc.secagg.fixed_point import FixedPointCodes, FixedPointScale
from fedgrpc.secagg.graph import NeighbourGraph, SecAggParams, choose_neighbourhood
from fedgrpc.secagg.messages import (
    AdvertiseKeys,
    AggregateResult,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    NoiseShareSpec,
    RoundSetup,
    SealedShare,
    ShareInbox,
    SharePackage,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
)
from fedgrpc.secagg.phases import ClientPhase, ServerPhase
from fedgrpc.secagg.ring import Ring, ring_bits
from fedgrpc.secagg.server_round import ServerRound

__all__ = [
    "AbortReason",
    "AdvertiseKeys",
    "AggregateResult",
    "ClientPhase",
    "ClientRound",
    "ConsistencyCheckError",
    "ConsistencySignature",
    "FixedPointCodes",
    "FixedPointScale",
    "InconsistentSharesError",
    "KeyDirectory",
    "MaskedInput",
    "NeighbourGraph",
    "NoiseShareSpec",
    "PeerKeyError",
    "PeerSignatureError",
    "ProtocolViolationError",
    "Ring",
    "RoundSetup",
    "SealedShare",
    "SecAggAbortError",
    "SecAggParams",
    "ServerPhase",
    "ServerRound",
    "ShareInbox",
    "SharePackage",
    "SignatureVerifier",
    "Signer",
    "SurvivorList",
    "TamperedShareError",
    "TooFewClientsError",
    "UnmaskRequest",
    "UnmaskResponse",
    "choose_neighbourhood",
    "ring_bits",
]
