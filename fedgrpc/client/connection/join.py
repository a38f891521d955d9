"""Joining a federation: who we are, whom we trust, and what Join said.

One Join attempt is two calls: GetJoinChallenge (a fresh nonce and the
coordinator's key), then Join with the client's key and its signature over
the Join statement (`crypto.signing.JoinStatement`), which names the
challenge, the run and the coordinator's key, so it is useless to anyone
who captures it.

Identity and trust: a client signs with `ClientConfig.identity_key`, or with
a throwaway key made at start (only an `open_enrollment` coordinator admits
those). It trusts the coordinator key `ClientConfig.coordinator_key` pins,
or else the key the coordinator presents at its first Join (trust on first
use, logged with the fingerprint so an operator can compare), and checks it
*before* signing anything for it; from then on every model must carry that
key's signature, so a server in the middle can neither feed the client other
weights nor reuse its signed Join elsewhere. A coordinator that comes back
after a fault must be the same one, with the same H and codec
(`check_same_federation`). Runs on the client's background loop.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

from fedgrpc._proto.v1 import common_pb2, coordinator_pb2
from fedgrpc.compress import CodecConfig, Dense, format_codec, make_codec
from fedgrpc.config import ClientConfig
from fedgrpc.crypto.files import load_identity_option, load_public_key
from fedgrpc.crypto.keys import PrivateKey, PublicKey
from fedgrpc.crypto.signing import JoinStatement
from fedgrpc.domain.chunks import DEFAULT_CHUNK_BYTES
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.domain.requests import HashName
from fedgrpc.errors import (
    ConfigError,
    IdentityFileError,
    IncompatibleClientError,
    InvalidKeyError,
    InvalidUpdateError,
    UnknownClientError,
    UntrustedCoordinatorError,
)
from fedgrpc.log import get_logger
from fedgrpc.wire.codec_params import (
    WIRE_CODEC_TO_PROTO,
    codec_params_from_proto,
    codec_params_to_proto,
)
from fedgrpc.wire.convert import (
    HASH_FROM_PROTO,
    HASH_TO_PROTO,
    spec_from_proto,
    spec_to_proto,
)
from fedgrpc.wire.signed import key_from_proto, key_to_proto

if TYPE_CHECKING:
    from fedgrpc._proto.v1.coordinator_pb2_grpc import CoordinatorServiceAsyncStub


log = get_logger(__name__)
FINGERPRINT_CHARS = 64


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """The key this client signs with, and whether it was made up on the spot."""

    key: PrivateKey
    ephemeral: bool


def load_client_identity(config: ClientConfig) -> ClientIdentity:
    """`config.identity_key`, or a throwaway key when it is unset.

    Raises:
        ConfigError: the key file is unreadable or not an Ed25519 PEM key.
    """
    if not config.identity_key:
        key = PrivateKey.generate()
        log.info(
            "client_identity", key=key.public_key.short_fingerprint, ephemeral=True
        )
        return ClientIdentity(key, ephemeral=True)
    key = load_identity_option(config.identity_key)
    log.info("client_identity", key=key.public_key.short_fingerprint, ephemeral=False)
    return ClientIdentity(key, ephemeral=False)


def pinned_fingerprint(config: ClientConfig) -> str | None:
    """The coordinator fingerprint `config.coordinator_key` insists on, if any.

    Raises:
        ConfigError: the pin names a file that is not a PEM public key.
    """
    pin = config.coordinator_key
    if not pin:
        return None
    if len(pin) == FINGERPRINT_CHARS and all(
        c in "0123456789abcdefABCDEF" for c in pin
    ):
        return pin.lower()
    try:
        return load_public_key(pin).fingerprint
    except IdentityFileError as exc:
        raise ConfigError(f"coordinator_key={pin!r}: {exc}") from exc


def check_coordinator(key: PublicKey, pinned: str | None, target: str) -> None:
    """Accept the coordinator's key: it matches the pin, or (no pin) log it.

    Raises:
        UntrustedCoordinatorError: it does not match the pin.
    """
    if pinned is None:
        log.info("coordinator_key_trusted", peer=target, key=key.fingerprint)
        return
    if key.fingerprint != pinned:
        raise UntrustedCoordinatorError(
            f"the coordinator at {target} presented key {key.fingerprint}, but "
            f"ClientConfig.coordinator_key pins {pinned}: it may be an impostor, or "
            "its identity_key was replaced; check with the operator before "
            "updating the pin"
        )


def library_version() -> str:
    """The installed fedgrpc version, reported at Join for the coordinator's logs."""
    try:
        return metadata.version("fedgrpc")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def default_client_name() -> str:
    """host:pid, unique enough to tell clients apart in coordinator logs."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Federation:
    """What Join told us about the run."""

    run_id: str
    inner_steps: int
    chunk_bytes: int
    model_version: int
    seed_model: bool
    codec: CodecConfig
    """The update codec the coordinator announced."""
    feedback_decay: float
    """Error-feedback decay the coordinator announced (1.0: plain)."""
    coordinator_key: PublicKey
    """The key every model must be signed with."""
    round_nonce: bytes
    """Nonce of the round current at Join (round 0: what seeding signs)."""
    signed: bool
    """The coordinator requires signed updates."""
    secure_aggregation: bool = False
    """Rounds are masked (SecAgg+); `client.secure` takes part in them."""
    heartbeat_interval_s: float = 0.0
    """Heartbeat period the coordinator expects (0: it did not say)."""
    last_update_round: int = 0
    """Round our last update was committed to, as the coordinator recorded it."""
    last_applied_round: int = 0
    """Last round applied with our update in its mean."""
    run_finished: bool = False
    """The run already ended (`max_rounds`): pull the final model, push nothing."""
    model_spec: ModelSpec | None = None
    """The federation's spec: this client's, or one differing only in float
    dtypes that it casts from (None: an older coordinator did not say)."""
    round_mode: str = "sync"
    """How rounds are paced (`config.rounds`): sync, deadline, buffered_async."""
    max_staleness: int = 0
    """buffered_async: versions an update may lag the open round's base."""
    fragments: int = 0
    """streaming: P, the parameter ranges synced in turn (0 in other modes)."""
    streaming_overlap_steps: int = 0
    """streaming: τ, steps trained while a fragment is in flight."""
    streaming_mix: float = 0.0
    """streaming: alpha, the local share kept when a fragment is merged."""
    update_hash: HashName = "sha256"
    """The hash our updates' chains use, as negotiated at Join (SHA-256 with
    coordinators older than the choice)."""
    chunk_signatures_optional: bool = False
    """Chunks may go unsigned, the commit's signature covering their chain
    (RoundConfig.chunk_signatures_optional; False with older coordinators)."""
    shard_index: int = 0
    """Parameter sharding: the shard this Join reached (`domain.shards`)."""
    shard_peers: tuple[str, ...] = ()
    """Every shard's address in shard order; () unsharded."""
    shard_bounds: tuple[int, ...] = ()
    """The N+1 coordinate cuts of the shards' ranges; () unsharded."""


@dataclass(frozen=True, slots=True)
class JoinSettings:
    """What the user asked of the federation; None follows the coordinator."""

    inner_steps: int | None = None
    compression: CodecConfig | None = None
    frozen_sha256: bytes = b""
    """Digest of this model's frozen base (`FederatedTensors.frozen_digest`)."""


def announced_codec(
    round_config: common_pb2.RoundConfig, chunk_bytes: int
) -> CodecConfig:
    """The federation's codec, checked against what this client would encode.

    Raises:
        IncompatibleClientError: an unknown codec, or block sizes that differ
            from this version's (the coordinator runs another fedgrpc).
    """
    if not round_config.HasField("codec_params"):
        return Dense(values="fp32")  # a coordinator from before compression
    params = round_config.codec_params
    try:
        codec = codec_params_from_proto(params)
    except InvalidUpdateError as exc:
        raise IncompatibleClientError(f"{exc}; upgrade fedgrpc on this client") from exc
    ours = make_codec(codec).block_coordinates(chunk_bytes)
    if params.block_coordinates and params.block_coordinates != ours:
        raise IncompatibleClientError(
            f"the coordinator uses blocks of {params.block_coordinates} coordinates "
            f"for {format_codec(codec)}, this client {ours}; run matching versions"
        )
    return codec


def join_request(
    config: ClientConfig, spec: ModelSpec, settings: JoinSettings
) -> coordinator_pb2.JoinRequest:
    """The Join request before the identity fields are filled in."""
    wanted = settings.compression
    return coordinator_pb2.JoinRequest(
        client_name=config.name or default_client_name(),
        model_spec=spec_to_proto(spec),
        supported_codecs=list(WIRE_CODEC_TO_PROTO.values()),
        # Preference order; the coordinator picks (RoundConfig.update_hash).
        supported_hashes=[
            HASH_TO_PROTO[h] for h in config.hashes if h in HASH_TO_PROTO
        ],
        model_hashes=[HASH_TO_PROTO[h] for h in config.hashes if h in HASH_TO_PROTO],
        inner_steps=settings.inner_steps or 0,
        library_version=library_version(),
        requested_codec=(
            codec_params_to_proto(wanted, DEFAULT_CHUNK_BYTES) if wanted else None
        ),
        frozen_sha256=settings.frozen_sha256,
    )


def federation_from(
    response: coordinator_pb2.JoinResponse, coordinator: PublicKey, spec: ModelSpec
) -> Federation:
    """What a JoinResponse tells the client, checked against this version.

    `spec` is the one this client sent; the federation's must equal it or
    differ only in floating-point dtypes (`ModelSpec.casts_to`).

    Raises:
        IncompatibleClientError: see `announced_codec`.
        ModelMismatchError: the announced spec is another model.
    """
    federation_spec = None
    if response.HasField("model_spec"):
        federation_spec = spec_from_proto(response.model_spec)
        spec.check_same_as(federation_spec, allow_casts=True)
    round_config = response.round_config
    chunk_bytes = round_config.chunk_bytes or DEFAULT_CHUNK_BYTES
    return Federation(
        run_id=response.run_id,
        inner_steps=round_config.inner_steps,
        chunk_bytes=chunk_bytes,
        model_version=response.model_version,
        seed_model=response.seed_model,
        codec=announced_codec(round_config, chunk_bytes),
        feedback_decay=round_config.codec_params.feedback_decay or 1.0,
        coordinator_key=coordinator,
        round_nonce=response.round_nonce,
        signed=round_config.update_signatures_required,
        secure_aggregation=round_config.secure_aggregation,
        heartbeat_interval_s=round_config.heartbeat_interval_s,
        last_update_round=response.last_update_round,
        last_applied_round=response.last_applied_round,
        run_finished=response.run_finished,
        model_spec=federation_spec,
        round_mode=round_config.round_mode or "sync",
        max_staleness=round_config.max_staleness,
        fragments=round_config.fragments,
        streaming_overlap_steps=round_config.streaming_overlap_steps,
        streaming_mix=round_config.streaming_mix,
        # Never one we did not offer; an unknown number cannot be honoured.
        update_hash=HASH_FROM_PROTO.get(round_config.update_hash, "sha256"),
        chunk_signatures_optional=round_config.chunk_signatures_optional,
        shard_index=response.shard_index,
        shard_peers=tuple(response.shard_peers),
        shard_bounds=tuple(response.shard_bounds),
    )


def coordinator_key(record: common_pb2.PublicKeyRecord, target: str) -> PublicKey:
    """The coordinator's key from a challenge or Join response.

    Raises:
        UntrustedCoordinatorError: missing or malformed.
    """
    try:
        return key_from_proto(record)
    except InvalidKeyError as exc:
        raise UntrustedCoordinatorError(
            f"the coordinator at {target} presented no usable key ({exc}); it runs "
            "an older fedgrpc or is not a fedgrpc coordinator"
        ) from exc


async def signed_join(
    stub: CoordinatorServiceAsyncStub,
    request: coordinator_pb2.JoinRequest,
    identity: ClientIdentity,
    pinned: str | None,
    target: str,
    timeout_s: float,
) -> tuple[PublicKey, coordinator_pb2.JoinResponse]:
    """One attempt: a fresh challenge, a check of the coordinator, a signed Join.

    Raises:
        UntrustedCoordinatorError: the coordinator's key is malformed, not
            the pinned one, or changes between the challenge and the Join.
        grpc.RpcError: either call failed (the caller retries UNAVAILABLE).
    """
    challenge = await stub.GetJoinChallenge(
        coordinator_pb2.GetJoinChallengeRequest(), timeout=timeout_s
    )
    coordinator = coordinator_key(challenge.coordinator_key, target)
    check_coordinator(coordinator, pinned, target)
    key = identity.key
    signed = coordinator_pb2.JoinRequest()
    signed.CopyFrom(request)
    signed.client_key.CopyFrom(key_to_proto(key.public_key))
    signed.challenge_nonce = challenge.nonce
    statement = JoinStatement(
        run_id=challenge.run_id,
        nonce=challenge.nonce,
        coordinator_key=coordinator,
        client_key=key.public_key,
        client_name=request.client_name,
        model_spec_digest=request.model_spec.digest,
    )
    signed.join_signature = key.sign(statement.encode())
    response = await stub.Join(signed, timeout=timeout_s)
    if coordinator_key(response.coordinator_key, target) != coordinator:
        raise UntrustedCoordinatorError(
            f"the coordinator at {target} answered Join with another key than it "
            "gave in its challenge; refusing it"
        )
    return coordinator, response


def explain_refusal(exc: UnknownClientError, identity: ClientIdentity) -> Exception:
    """The refusal, plus what to do about it when the key was a throwaway one."""
    if not identity.ephemeral:
        return exc
    return UnknownClientError(
        f"{exc}. This client has no identity_key and joined with a throwaway key, "
        "which only an open_enrollment coordinator admits: make one with "
        "`fedgrpc keygen --out DIR`, give the operator its .pub file and set "
        "ClientConfig.identity_key"
    )


def check_same_federation(before: Federation, after: Federation) -> None:
    """A coordinator that came back must run the same H and codec.

    Raises:
        IncompatibleClientError: it now announces other settings.
    """
    old = (before.inner_steps, before.codec, before.chunk_bytes, before.round_mode)
    new = (after.inner_steps, after.codec, after.chunk_bytes, after.round_mode)
    if old != new:
        raise IncompatibleClientError(
            f"the coordinator came back with (inner_steps, codec, chunk_bytes, "
            f"round_mode) = "
            f"{new}, this client joined with {old}; create a new DiLoCoClient"
        )
