"""Messages <-> signed statements: what of each message its signature covers.

`fedgrpc.crypto.signing` defines the statements and knows no protobuf; this
module fills them from messages, so the client (signing what it sends) and
the coordinator (verifying what it received) build them through the same
functions and cannot drift apart. Proto names stop here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedgrpc._proto.v1 import common_pb2, coordinator_pb2
from fedgrpc.crypto.keys import PrivateKey, PublicKey, SignatureAlgorithm
from fedgrpc.crypto.signing import (
    DEFAULT_HASH,
    CommitProof,
    HashName,
    JoinStatement,
    ModelStatement,
    UpdateSigner,
    UpdateStatement,
)
from fedgrpc.domain.requests import UpdateHeaderInfo
from fedgrpc.errors import InvalidKeyError, InvalidUpdateError
from fedgrpc.wire.codec_params import WIRE_CODEC_TO_PROTO, CodecBinding
from fedgrpc.wire.convert import HASH_FROM_PROTO, HASH_TO_PROTO, header_from_proto

_ALGORITHM_TO_PROTO: dict[
    SignatureAlgorithm, common_pb2.SignatureAlgorithm.ValueType
] = {"ed25519": common_pb2.SIGNATURE_ALGORITHM_ED25519}
_ALGORITHM_FROM_PROTO = {v: k for k, v in _ALGORITHM_TO_PROTO.items()}


def key_to_proto(key: PublicKey) -> common_pb2.PublicKeyRecord:
    """A public key as the wire carries it."""
    return common_pb2.PublicKeyRecord(
        algorithm=_ALGORITHM_TO_PROTO[key.algorithm], public_key=key.raw
    )


def key_from_proto(record: common_pb2.PublicKeyRecord) -> PublicKey:
    """Decode a key record.

    Raises:
        InvalidKeyError: an unknown algorithm, or a key of the wrong length.
    """
    algorithm = _ALGORITHM_FROM_PROTO.get(record.algorithm)
    if algorithm is None:
        raise InvalidKeyError(
            f"signature algorithm {record.algorithm} is unknown; this coordinator "
            f"knows {', '.join(_ALGORITHM_TO_PROTO)}"
        )
    return PublicKey(algorithm, bytes(record.public_key))


@dataclass(frozen=True, slots=True)
class JoinProof:
    """What a JoinRequest offers as proof of identity; nothing checked yet."""

    client_key: common_pb2.PublicKeyRecord | None
    nonce: bytes
    signature: bytes = field(repr=False)
    client_name: str
    model_spec_digest: bytes

    def statement(
        self, run_id: str, coordinator: PublicKey, client: PublicKey
    ) -> bytes:
        """The Join statement the signature must cover."""
        return JoinStatement(
            run_id=run_id,
            nonce=self.nonce,
            coordinator_key=coordinator,
            client_key=client,
            client_name=self.client_name,
            model_spec_digest=self.model_spec_digest,
        ).encode()


def join_proof_from_proto(request: coordinator_pb2.JoinRequest) -> JoinProof:
    """The identity part of a Join request, read before anything is validated.

    Uses the request's own spec digest, so authentication needs no parsing
    of the spec (which could fail with a code that tells a stranger more).
    """
    return JoinProof(
        client_key=request.client_key if request.HasField("client_key") else None,
        nonce=request.challenge_nonce,
        signature=request.join_signature,
        client_name=request.client_name,
        model_spec_digest=request.model_spec.digest,
    )


def update_statement(
    header: UpdateHeaderInfo, run_id: str, binding: CodecBinding
) -> UpdateStatement:
    """The statement an UpdateHeader's signature covers, for run `run_id`."""
    kind = (
        coordinator_pb2.UPDATE_KIND_INITIAL_WEIGHTS
        if header.is_initial_weights
        else coordinator_pb2.UPDATE_KIND_PSEUDO_GRADIENT
    )
    samples, claim = header.declared_samples, header.record_dp
    return UpdateStatement(
        run_id=run_id,
        round_id=header.round_id,
        round_nonce=header.round_nonce,
        client_id=header.client_id,
        base_version=header.base_version,
        base_model_sha256=header.base_model_sha256,
        kind=kind,
        codec=WIRE_CODEC_TO_PROTO[header.codec],
        values=binding.values,
        density=binding.density,
        num_coordinates=header.num_coordinates,
        num_samples=header.num_samples if samples is None else samples,
        train_loss=header.train_loss,
        record_dp=None if claim is None else (claim.epsilon, claim.delta, claim.steps),
        compute_s=header.compute_s,
        eval_claim=(
            None
            if header.eval_loss is None
            else (header.eval_loss, header.eval_version)
        ),
        hash_name=header.hash_name,
        shard=header.shard if header.shard != (0, 0) else None,
    )


def sign_update_header(
    header: coordinator_pb2.UpdateHeader,
    key: PrivateKey,
    run_id: str,
    binding: CodecBinding,
    hash_name: HashName = DEFAULT_HASH,
    sign_chunks: bool = True,
) -> UpdateSigner:
    """Sign `header` in place; returns the signer for the update's chunks.

    The statement is built from the header as the coordinator will read it
    (`header_from_proto`), so both sides sign and verify the same fields.
    `hash_name` (RoundConfig.update_hash) is written into the header first;
    SHA-256 is left unset, so a coordinator older than the field reads the
    header exactly as before.
    """
    if hash_name != DEFAULT_HASH:
        header.hash_algorithm = HASH_TO_PROTO[hash_name]
    statement = update_statement(header_from_proto(header), run_id, binding)
    signer = UpdateSigner(key, statement, sign_chunks)
    header.signature = signer.header_signature
    return signer


def commit_message(signer: UpdateSigner) -> coordinator_pb2.PushUpdateRequest:
    """The signed UpdateCommit closing `signer`'s chain."""
    proof = signer.commit()
    return coordinator_pb2.PushUpdateRequest(
        commit=coordinator_pb2.UpdateCommit(
            num_chunks=proof.num_chunks,
            chain_sha256=proof.chain_sha256,
            signature=proof.signature,
        )
    )


def commit_proof(commit: coordinator_pb2.UpdateCommit) -> CommitProof:
    """The chain head and signature an UpdateCommit carries."""
    return CommitProof(commit.num_chunks, commit.chain_sha256, commit.signature)


def model_statement(header: coordinator_pb2.ModelHeader, run_id: str) -> ModelStatement:
    """The statement a ModelHeader's signature covers.

    Raises:
        InvalidUpdateError: the header names a hash this build does not know.
    """
    return ModelStatement(
        run_id=run_id,
        model_version=header.model_version,
        round_id=header.round_id,
        model_spec_digest=header.model_spec_digest,
        total_bytes=header.total_bytes,
        weights_sha256=header.weights_sha256,
        hash_name=model_hash_of(header),
    )


def model_hash_of(header: coordinator_pb2.ModelHeader) -> HashName:
    """The hash of a ModelHeader's weights digest (unset: SHA-256, as before it).

    Raises:
        InvalidUpdateError: a hash this build does not know.
    """
    name = HASH_FROM_PROTO.get(header.weights_hash)
    if name is None:
        raise InvalidUpdateError(
            f"model version {header.model_version} names weights hash "
            f"{header.weights_hash}, which this build does not know (it knows "
            f"{', '.join(HASH_TO_PROTO)}): upgrade fedgrpc"
        )
    return name
