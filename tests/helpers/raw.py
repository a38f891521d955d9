"""Raw protobuf calls against a coordinator, for tests that need exact control.

Uses the synchronous grpc API and the generated stubs directly: no fedgrpc
client code, so these tests check the coordinator against the contract. The
signing follows the contract too (challenge-response Join, signed update
chains), through `fedgrpc.crypto.signing` and `fedgrpc.wire.signed`, which
is what a client in another language would reimplement.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from fedgrpc._proto.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
)
from fedgrpc.compress import CodecConfig, make_codec
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.crypto.signing import HashName, JoinStatement, UpdateSigner
from fedgrpc.crypto.statements import model_digest
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.domain.requests import RecordPrivacyClaim
from fedgrpc.wire.codec_params import DENSE_FP32_BINDING, CodecBinding, codec_binding
from fedgrpc.wire.convert import HASH_FROM_PROTO, record_dp_to_proto, spec_to_proto
from fedgrpc.wire.frames import encode_update_chunk
from fedgrpc.wire.signed import (
    commit_message,
    key_from_proto,
    key_to_proto,
    model_hash_of,
    sign_update_header,
)

PB = coordinator_pb2
Service = coordinator_pb2_grpc.CoordinatorServiceStub


def tiny_spec(n: int = 10) -> ModelSpec:
    return ModelSpec((TensorSpec("w", (n,), DType.FLOAT32),))


def stub(address: str) -> tuple[grpc.Channel, Service]:
    channel = grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
        ],
    )
    service = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
    # Signed updates need the round's nonce and base digest, which raw tests
    # (without a Session stream) read from AdminService on the same channel.
    service.admin = admin_pb2_grpc.AdminServiceStub(channel)  # type: ignore[attr-defined]
    return channel, service


@dataclass
class Joined:
    """A JoinResponse, the key that joined, and the stub it joined through.

    Attribute access falls through to the response (`joined.client_id`).
    """

    response: coordinator_pb2.JoinResponse
    key: PrivateKey
    service: Service = field(repr=False)
    model_hash: HashName | None = None
    """The hash of the model digests it pulls and signs as its base, when
    not its update hash: SHA-256 for a client from before
    JoinRequest.model_hashes (`join(..., model_hashes=())`)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.response, name)

    def with_token(self, token: bytes) -> Joined:
        """The same client claiming another session token."""
        response = coordinator_pb2.JoinResponse()
        response.CopyFrom(self.response)
        response.session_token = token
        return Joined(response, self.key, self.service, self.model_hash)


def join_request(
    service: Service,
    spec: ModelSpec,
    key: PrivateKey,
    name: str = "raw",
    **fields: Any,
) -> coordinator_pb2.JoinRequest:
    """A signed JoinRequest over a fresh challenge (send it within 60 s)."""
    challenge = service.GetJoinChallenge(PB.GetJoinChallengeRequest(), timeout=10)
    fields.setdefault("supported_codecs", [common_pb2.CODEC_DENSE_FP32])
    request = PB.JoinRequest(
        client_name=name,
        model_spec=spec_to_proto(spec),
        client_key=key_to_proto(key.public_key),
        challenge_nonce=challenge.nonce,
        **fields,
    )
    statement = JoinStatement(
        run_id=challenge.run_id,
        nonce=challenge.nonce,
        coordinator_key=key_from_proto(challenge.coordinator_key),
        client_key=key.public_key,
        client_name=name,
        model_spec_digest=request.model_spec.digest,
    )
    request.join_signature = key.sign(statement.encode())
    return request


def join(
    service: Service,
    spec: ModelSpec,
    name: str = "raw",
    inner_steps: int = 0,
    codecs: tuple[int, ...] = (common_pb2.CODEC_DENSE_FP32,),
    requested: common_pb2.CodecParams | None = None,
    key: PrivateKey | None = None,
    hashes: tuple[int, ...] = (),
) -> Joined:
    """Join over a fresh challenge; `hashes`: JoinRequest.supported_hashes
    and, as current clients send, JoinRequest.model_hashes."""
    key = key or PrivateKey.generate()
    request = join_request(
        service,
        spec,
        key,
        name,
        supported_codecs=list(codecs),
        inner_steps=inner_steps,
        requested_codec=requested,
        supported_hashes=list(hashes),
        model_hashes=list(hashes),
    )
    return Joined(service.Join(request, timeout=10), key, service)


def join_before_model_hashes(
    service: Service,
    spec: ModelSpec,
    name: str,
    key: PrivateKey,
    hashes: tuple[int, ...],
) -> Joined:
    """Join as a client from before JoinRequest.model_hashes: `hashes` for its
    updates only, so the coordinator sends it SHA-256 model digests."""
    request = join_request(service, spec, key, name, supported_hashes=list(hashes))
    return Joined(service.Join(request, timeout=10), key, service, "sha256")


def admin_status(joined: Joined) -> admin_pb2.GetStatusResponse:
    """AdminService.GetStatus on the channel `joined` came through."""
    admin: admin_pb2_grpc.AdminServiceStub = joined.service.admin  # type: ignore[attr-defined]  # set by `stub`
    return admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=10)


@dataclass
class UpdateParams:
    """Everything an update header says besides its values."""

    round_id: int
    base_version: int
    initial: bool = False
    num_samples: int = 1
    train_loss: float = 1.0
    codec: int = common_pb2.CODEC_DENSE_FP32
    binding: CodecBinding = DENSE_FP32_BINDING
    nonce: bytes | None = None
    """None: the coordinator's current round nonce (from AdminService)."""
    base_sha256: bytes | None = None
    """None: the current model's SHA-256 (empty for initial weights)."""
    record_dp: RecordPrivacyClaim | None = None
    """A record-level DP claim, signed with the header (None: no claim)."""
    compute_s: float | None = None
    """Training seconds claimed for goodput, signed (None: not reported)."""
    hash_name: HashName | None = None
    """The chain hash the header names; chunks hash with `signer.hash`.
    None: the one Join negotiated (RoundConfig.update_hash)."""


def _base(
    joined: Joined, status: admin_pb2.GetStatusResponse, hash_name: HashName
) -> bytes:
    """The current model's digest under `hash_name` (status shows one hash).

    Otherwise pulled as `joined`. A client the coordinator will not serve
    (a forged session token) gets the status digest: its push is refused
    for the same reason before its base is looked at.
    """
    if HASH_FROM_PROTO[status.model_hash] == hash_name:
        return status.model_sha256
    try:
        header, _ = pull_model(joined.service, joined, status.model_version)
    except grpc.RpcError:
        return status.model_sha256
    return header.weights_sha256


def signed_header(
    joined: Joined, size: int, params: UpdateParams
) -> tuple[coordinator_pb2.PushUpdateRequest, UpdateSigner]:
    """A signed UpdateHeader message and the signer for the chunks after it."""
    nonce, base = params.nonce, params.base_sha256
    hash_name = params.hash_name or HASH_FROM_PROTO[joined.round_config.update_hash]
    if nonce is None or base is None:
        status = admin_status(joined)
        nonce = status.round_nonce if nonce is None else nonce
        if base is None:
            model_hash = joined.model_hash or hash_name
            base = b"" if params.initial else _base(joined, status, model_hash)
    kind = (
        PB.UPDATE_KIND_INITIAL_WEIGHTS
        if params.initial
        else PB.UPDATE_KIND_PSEUDO_GRADIENT
    )
    message = PB.PushUpdateRequest(
        header=PB.UpdateHeader(
            client_id=joined.client_id,
            session_token=joined.session_token,
            round_id=params.round_id,
            base_version=params.base_version,
            kind=kind,
            codec=params.codec,  # type: ignore[arg-type]
            num_coordinates=size,
            num_samples=params.num_samples,
            train_loss=params.train_loss,
            round_nonce=nonce,
            base_model_sha256=base,
        )
    )
    record_dp_to_proto(params.record_dp, message.header)
    if params.compute_s is not None:
        message.header.compute_s = params.compute_s
    signer = sign_update_header(
        message.header, joined.key, joined.run_id, params.binding, hash_name
    )
    return message, signer


def signed_chunk(
    signer: UpdateSigner, seq: int, offset: int, count: int, payload: bytes
) -> coordinator_pb2.PushUpdateRequest:
    proof = signer.sign_chunk(seq, offset, count, signer.hash(payload))
    return PB.PushUpdateRequest(
        chunk=PB.UpdateChunk(
            seq=seq,
            offset=offset,
            count=count,
            payload=payload,
            payload_sha256=proof.payload_sha256,
            prev_sha256=proof.prev_sha256,
            signature=proof.signature,
        )
    )


def resigned_first_chunk(
    joined: Joined,
    header: coordinator_pb2.PushUpdateRequest,
    chunk: coordinator_pb2.PushUpdateRequest,
    payload: bytes,
    binding: CodecBinding = DENSE_FP32_BINDING,
) -> coordinator_pb2.PushUpdateRequest:
    """Chunk 0 of `header`'s update with another payload, validly signed.

    For tests of what the coordinator does with *authentic* bad content
    (undecodable blocks, NaN), as opposed to tampered content.
    """
    copy = PB.UpdateHeader()
    copy.CopyFrom(header.header)
    signer = sign_update_header(copy, joined.key, joined.run_id, binding)
    c = chunk.chunk
    return signed_chunk(signer, c.seq, c.offset, c.count, payload)


def coded_update_messages(
    joined: Joined,
    values: np.ndarray,
    codec: CodecConfig,
    *,
    round_id: int,
    base_version: int,
    num_samples: int = 1,
) -> tuple[list[coordinator_pb2.PushUpdateRequest], np.ndarray]:
    """An update encoded block by block with `codec`, and what it decodes to."""
    coder = make_codec(codec, rng=np.random.default_rng(0))
    block = joined.round_config.codec_params.block_coordinates
    params = UpdateParams(
        round_id,
        base_version,
        num_samples=num_samples,
        codec=joined.round_config.update_codec,
        binding=codec_binding(codec),
    )
    header, signer = signed_header(joined, values.size, params)
    messages = [header]
    sent = np.zeros(values.size, dtype=np.float32)
    for seq, start in enumerate(range(0, values.size, block)):
        part = values[start : start + block].astype(np.float32)
        encoded = coder.encode(part)
        encoded.sent.add_into(sent[start : start + part.size])
        messages.append(signed_chunk(signer, seq, start, part.size, encoded.payload))
    messages.append(commit_message(signer))
    return messages, sent


def update_messages(
    joined: Joined,
    values: np.ndarray,
    *,
    round_id: int,
    base_version: int,
    initial: bool = False,
    chunk_coords: int = 4,
    num_samples: int = 1,
    commit: bool = True,
) -> Iterator[coordinator_pb2.PushUpdateRequest]:
    """A signed dense float32 update: header, chunks of `chunk_coords`, commit."""
    params = UpdateParams(round_id, base_version, initial, num_samples=num_samples)
    header, signer = signed_header(joined, values.size, params)
    yield header
    flat = values.astype("<f4")
    for seq, start in enumerate(range(0, flat.size, chunk_coords)):
        part = flat[start : start + chunk_coords]
        yield signed_chunk(signer, seq, start, part.size, part.tobytes())
    if commit:
        yield commit_message(signer)


def framed_update(
    joined: Joined, values: np.ndarray, params: UpdateParams, chunk_coords: int
) -> list[bytes]:
    """A signed update pre-encoded as the fedgrpc client sends it (wire.frames)."""
    header, signer = signed_header(joined, values.size, params)
    frames = [header.SerializeToString()]
    flat = values.astype("<f4")
    for seq, start in enumerate(range(0, flat.size, chunk_coords)):
        view = memoryview(flat[start : start + chunk_coords].tobytes())
        proof = signer.sign_chunk(seq, start, len(view) // 4, signer.hash(view))
        frames.append(encode_update_chunk(seq, start, len(view) // 4, view, proof))
    frames.append(commit_message(signer).SerializeToString())
    return frames


def pull(
    service: Service,
    joined: Joined,
    min_version: int = 0,
    timeout: float = 10,
) -> tuple[int, np.ndarray]:
    """(version, float32 values) of an all-float32 model."""
    header, values = pull_model(service, joined, min_version, timeout)
    return header.model_version, values


def pull_model(
    service: Service,
    joined: Joined,
    min_version: int = 0,
    timeout: float = 10,
) -> tuple[PB.ModelHeader, np.ndarray]:
    """(header, float32 values); the bytes checked under the header's hash."""
    header, data = None, bytearray()
    for message in service.PullModel(
        PB.PullModelRequest(
            client_id=joined.client_id,
            session_token=joined.session_token,
            min_version=min_version,
        ),
        timeout=timeout,
    ):
        if message.WhichOneof("part") == "header":
            header = message.header
        else:
            assert message.chunk.offset == len(data)
            data += message.chunk.data
    assert header is not None
    digest = model_digest(model_hash_of(header), bytes(data))
    assert digest == header.weights_sha256
    return header, np.frombuffer(bytes(data), dtype="<f4")
