"""A client's requests once validated: what it joins with, what it claims an update is.

`fedgrpc.wire.convert` builds these from `fedgrpc.v1` messages (rejecting
malformed ones there); everything past the gRPC edge takes these instead, so the
round engine never sees a protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fedgrpc.domain.codecs import CodecConfig, TopK
from fedgrpc.domain.model_spec import ModelSpec

WireCodec = Literal["dense-fp32", "dense", "topk", "secagg-ring"]
"""How an update's chunks are encoded (common.proto's `Codec`)."""
HashName = Literal["sha256", "blake3"]
"""The hash of an update's payload digests and chain (common.proto's
`HashAlgorithm`; `fedgrpc.crypto.statements` computes them)."""


def wire_codec(config: CodecConfig) -> WireCodec:
    """The wire codec whose chunks carry updates under `config`."""
    if isinstance(config, TopK):
        return "topk"
    return "dense-fp32" if config.values == "fp32" else "dense"


@dataclass(frozen=True, slots=True)
class RecordPrivacyClaim:
    """A client's record-level DP spend, as its signed update header states it.

    ε at `delta`, composed over `steps` DP-SGD steps (every inner step of
    every round so far). A claim, like `train_loss`: the signature proves
    who made it, not that it is true; the coordinator refuses claims no
    honest accountant produces (`coordinator.rounds.record_privacy`).
    """

    epsilon: float
    delta: float
    steps: int = 0


@dataclass(frozen=True, slots=True)
class UpdateHeaderInfo:
    """A validated `UpdateHeader`: what the client claims its update is."""

    client_id: str
    session_token: bytes = field(repr=False)
    round_id: int
    base_version: int
    is_initial_weights: bool
    codec: WireCodec
    num_coordinates: int
    num_samples: int
    """At least 1 (0 on the wire counts as 1)."""
    train_loss: float
    round_nonce: bytes = b""
    base_model_sha256: bytes = b""
    signature: bytes = field(default=b"", repr=False)
    declared_samples: int | None = None
    """`num_samples` exactly as sent (the signature covers it); None: same."""
    record_dp: RecordPrivacyClaim | None = None
    """Its record-level DP claim (None: it claims none)."""
    compute_s: float | None = None
    """Wall seconds of training it claims to stand for (None: not reported);
    read only for goodput, never for weighting."""
    eval_loss: float | None = None
    """The client's validation loss of model `eval_version` (None: none)."""
    eval_version: int = 0
    hash_name: HashName = "sha256"
    """The hash of its chain ("sha256" when the header names none)."""
    shard: tuple[int, int] = (0, 0)
    """(shard index, shard count) the update's range is for; (0, 0): an
    unsharded client (`domain.shards`)."""


@dataclass(frozen=True, slots=True)
class JoinInfo:
    """A validated `JoinRequest`."""

    name: str
    spec: ModelSpec
    inner_steps: int
    supported_codecs: tuple[WireCodec, ...]
    requested_codec: CodecConfig | None
    frozen_sha256: bytes = b""
    """Digest of the frozen parameters that never travel (b"": none, or an
    older client); see `client.tensors.frozen_digest`."""
    supported_hashes: tuple[HashName, ...] = ("sha256",)
    """Update hashes the client can use (older clients: SHA-256 only)."""
    model_hashes: tuple[HashName, ...] = ("sha256",)
    """Hashes it can check pulled models under (older clients: SHA-256 only,
    even those that offer BLAKE3 for updates)."""
