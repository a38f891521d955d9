"""Domain types <-> fedgrpc.v1 messages. Proto names stop here.

The coordinator and client translate every message through these functions,
so validation of what arrives from the network happens in one place.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedgrpc._proto.v1 import common_pb2, coordinator_pb2
from fedgrpc.config import CoordinatorConfig
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.domain.requests import (
    HashName,
    JoinInfo,
    RecordPrivacyClaim,
    UpdateHeaderInfo,
    wire_codec,
)
from fedgrpc.errors import InvalidUpdateError
from fedgrpc.wire.codec_params import (
    WIRE_CODEC_FROM_PROTO,
    WIRE_CODEC_TO_PROTO,
    codec_params_from_proto,
    codec_params_to_proto,
)

_DTYPE_TO_PROTO = {
    DType.FLOAT32: common_pb2.DTYPE_FLOAT32,
    DType.FLOAT16: common_pb2.DTYPE_FLOAT16,
    DType.BFLOAT16: common_pb2.DTYPE_BFLOAT16,
    DType.FLOAT64: common_pb2.DTYPE_FLOAT64,
    DType.INT64: common_pb2.DTYPE_INT64,
    DType.INT32: common_pb2.DTYPE_INT32,
}
_DTYPE_FROM_PROTO = {v: k for k, v in _DTYPE_TO_PROTO.items()}
_OPTIMIZER_TO_PROTO: dict[str, common_pb2.OuterOptimizer.ValueType] = {
    "nesterov": common_pb2.OUTER_OPTIMIZER_NESTEROV,
    "fedavg": common_pb2.OUTER_OPTIMIZER_FEDAVG,
    "sparseloco": common_pb2.OUTER_OPTIMIZER_SPARSELOCO,
    "fedavgm": common_pb2.OUTER_OPTIMIZER_FEDAVGM,
    "fedadagrad": common_pb2.OUTER_OPTIMIZER_FEDADAGRAD,
    "fedadam": common_pb2.OUTER_OPTIMIZER_FEDADAM,
    "fedyogi": common_pb2.OUTER_OPTIMIZER_FEDYOGI,
}
MAX_NAME_CHARS = 1024


def spec_to_proto(spec: ModelSpec) -> common_pb2.ModelSpec:
    """Encode a model spec (with its digest)."""
    return common_pb2.ModelSpec(
        tensors=[
            common_pb2.TensorSpec(
                name=t.name,
                shape=list(t.shape),
                dtype=_DTYPE_TO_PROTO[t.dtype],
                buffer=t.buffer,
            )
            for t in spec.tensors
        ],
        digest=spec.digest,
        aliases=[
            common_pb2.TensorAlias(name=alias, target=target)
            for alias, target in spec.aliases
        ],
    )


def spec_from_proto(message: common_pb2.ModelSpec) -> ModelSpec:
    """Decode and validate a model spec from the network.

    Raises:
        InvalidUpdateError: unknown dtype, over-long name, digest that does
            not match the tensors, or a spec `ModelSpec` rejects.
    """
    tensors = []
    for index, t in enumerate(message.tensors):
        if t.dtype not in _DTYPE_FROM_PROTO:
            raise InvalidUpdateError(
                f"tensor {index} ({t.name!r}) has unsupported dtype {t.dtype}; "
                "use float32, float16, bfloat16 or float64 (int64 or int32 for "
                "buffers)"
            )
        if not t.buffer and not _DTYPE_FROM_PROTO[t.dtype].is_float:
            raise InvalidUpdateError(
                f"tensor {index} ({t.name!r}) is an integer parameter; only "
                "buffers may be integers"
            )
        if len(t.name) > MAX_NAME_CHARS:
            raise InvalidUpdateError(
                f"tensor {index} has a name over {MAX_NAME_CHARS} chars"
            )
        tensors.append(
            TensorSpec(t.name, tuple(t.shape), _DTYPE_FROM_PROTO[t.dtype], t.buffer)
        )
    if any(len(a.name) > MAX_NAME_CHARS for a in message.aliases):
        raise InvalidUpdateError(
            f"a tensor alias has a name over {MAX_NAME_CHARS} chars"
        )
    aliases = tuple((a.name, a.target) for a in message.aliases)
    spec = ModelSpec(tuple(tensors), aliases)
    if message.digest and message.digest != spec.digest:
        raise InvalidUpdateError(
            "model spec digest does not match its tensors; the client computed it "
            "differently (version mismatch?)"
        )
    return spec


HASH_TO_PROTO: dict[HashName, common_pb2.HashAlgorithm.ValueType] = {
    "sha256": common_pb2.HASH_ALGORITHM_SHA256,
    "blake3": common_pb2.HASH_ALGORITHM_BLAKE3,
}
HASH_FROM_PROTO: dict[int, HashName] = {
    common_pb2.HASH_ALGORITHM_UNSPECIFIED: "sha256",  # clients before the choice
    **{number: name for name, number in HASH_TO_PROTO.items()},
}


def round_config_to_proto(
    config: CoordinatorConfig, update_hash: HashName | None = None
) -> common_pb2.RoundConfig:
    """The round settings clients learn at Join.

    `update_hash`: the hash negotiated with the joining client (None: the
    run's setting, as status reports it).
    """
    deadline = config.round_mode == "deadline"
    buffered = config.round_mode == "buffered_async"
    streaming = config.round_mode == "streaming"
    return common_pb2.RoundConfig(
        inner_steps=config.inner_steps,
        update_codec=WIRE_CODEC_TO_PROTO[wire_codec(config.codec_config)],
        chunk_bytes=config.chunk_bytes,
        min_clients=config.min_clients,
        round_timeout_s=config.round_timeout_s,
        # A plugin (`module:Class`) has no enum value: clients read only
        # lr and momentum, which they do not need for it.
        outer_optimizer=_OPTIMIZER_TO_PROTO.get(
            config.outer_optimizer, common_pb2.OUTER_OPTIMIZER_UNSPECIFIED
        ),
        outer_lr=config.resolved_outer_lr,
        outer_momentum=config.resolved_outer_momentum,
        max_message_bytes=config.max_message_bytes,
        codec_params=codec_params_to_proto(
            config.codec_config, config.chunk_bytes, config.resolved_feedback_decay
        ),
        update_signatures_required=config.update_signatures == "required",
        chunk_signatures_optional=not config.chunk_signatures_required,
        secure_aggregation=config.secure_aggregation,
        heartbeat_interval_s=config.heartbeat_interval_s,
        privacy=config.privacy,
        dp_clip_norm=config.dp_clip_norm if config.privacy != "off" else 0.0,
        round_mode=config.round_mode,
        round_duration_s=config.round_duration_s if deadline else 0.0,
        buffer_size=config.resolved_buffer_size if buffered else 0,
        max_staleness=config.max_staleness if buffered else 0,
        staleness_exponent=config.staleness_exponent if buffered else 0.0,
        fragments=config.fragments if streaming else 0,
        streaming_overlap_steps=config.streaming_overlap_steps if streaming else 0,
        streaming_mix=config.streaming_mix if streaming else 0.0,
        update_hash=HASH_TO_PROTO[update_hash or config.update_hash],
    )


def header_from_proto(header: coordinator_pb2.UpdateHeader) -> UpdateHeaderInfo:
    """Decode an update header; reject unknown kinds and codecs.

    Raises:
        InvalidUpdateError: kind or codec unspecified or unknown, or a hash
            algorithm this coordinator does not know.
    """
    if header.kind not in (
        coordinator_pb2.UPDATE_KIND_PSEUDO_GRADIENT,
        coordinator_pb2.UPDATE_KIND_INITIAL_WEIGHTS,
    ):
        raise InvalidUpdateError(
            f"update kind {header.kind} is not PSEUDO_GRADIENT or INITIAL_WEIGHTS"
        )
    if header.codec not in WIRE_CODEC_FROM_PROTO:
        raise InvalidUpdateError(
            f"codec {header.codec} is unknown; this coordinator speaks "
            f"{', '.join(WIRE_CODEC_TO_PROTO)}"
        )
    hash_name = HASH_FROM_PROTO.get(header.hash_algorithm)
    if hash_name is None:
        raise InvalidUpdateError(
            f"hash algorithm {header.hash_algorithm} is unknown; this coordinator "
            f"knows {', '.join(HASH_TO_PROTO)} (use RoundConfig.update_hash)"
        )
    return UpdateHeaderInfo(
        client_id=header.client_id,
        session_token=header.session_token,
        round_id=header.round_id,
        base_version=header.base_version,
        is_initial_weights=header.kind == coordinator_pb2.UPDATE_KIND_INITIAL_WEIGHTS,
        codec=WIRE_CODEC_FROM_PROTO[header.codec],
        num_coordinates=header.num_coordinates,
        num_samples=max(1, header.num_samples),
        train_loss=header.train_loss,
        round_nonce=header.round_nonce,
        base_model_sha256=header.base_model_sha256,
        signature=header.signature,
        declared_samples=header.num_samples,
        record_dp=record_dp_from_proto(header),
        compute_s=header.compute_s if header.HasField("compute_s") else None,
        eval_loss=header.eval_loss if header.HasField("eval_loss") else None,
        eval_version=header.eval_version,
        hash_name=hash_name,
        shard=(header.shard_index, header.shard_count),
    )


def record_dp_from_proto(
    header: coordinator_pb2.UpdateHeader,
) -> RecordPrivacyClaim | None:
    """The header's record-level DP claim: present if any of its fields is set.

    Unset parts read as 0, so a half-filled claim is refused by the
    coordinator's range checks instead of silently dropped.
    """
    if not (
        header.HasField("record_dp_epsilon")
        or header.HasField("record_dp_delta")
        or header.HasField("record_dp_steps")
    ):
        return None
    return RecordPrivacyClaim(
        header.record_dp_epsilon, header.record_dp_delta, header.record_dp_steps
    )


def record_dp_to_proto(
    claim: RecordPrivacyClaim | None, header: coordinator_pb2.UpdateHeader
) -> None:
    """Write `claim` into `header` (nothing when None)."""
    if claim is not None:
        header.record_dp_epsilon = claim.epsilon
        header.record_dp_delta = claim.delta
        header.record_dp_steps = claim.steps


def _frozen_digest(digest: bytes) -> bytes:
    """A JoinRequest's frozen-parameter digest: empty or 32 bytes.

    Raises:
        InvalidUpdateError: any other length.
    """
    if len(digest) not in (0, 32):
        raise InvalidUpdateError(
            f"frozen_sha256 must be empty or a 32-byte SHA-256, got {len(digest)} bytes"
        )
    return bytes(digest)


def join_from_proto(request: coordinator_pb2.JoinRequest) -> JoinInfo:
    """Decode a Join request; unknown codecs a newer client offers are ignored.

    Raises:
        InvalidUpdateError: a malformed model spec or requested codec.
    """
    requested = None
    if request.HasField("requested_codec"):
        requested = codec_params_from_proto(request.requested_codec)
    return JoinInfo(
        name=request.client_name[:MAX_NAME_CHARS],
        spec=spec_from_proto(request.model_spec),
        inner_steps=request.inner_steps,
        supported_codecs=tuple(
            WIRE_CODEC_FROM_PROTO[c]
            for c in request.supported_codecs
            if c in WIRE_CODEC_FROM_PROTO
        ),
        requested_codec=requested,
        frozen_sha256=_frozen_digest(request.frozen_sha256),
        supported_hashes=_offered_hashes(request.supported_hashes),
        model_hashes=_offered_hashes(request.model_hashes),
    )


def _offered_hashes(offered: Iterable[int]) -> tuple[HashName, ...]:
    """SHA-256, which every client speaks listed or not, then the known others."""
    others = (
        HASH_FROM_PROTO[h]
        for h in offered
        if h in HASH_FROM_PROTO and h != common_pb2.HASH_ALGORITHM_SHA256
    )
    return ("sha256", *others)
