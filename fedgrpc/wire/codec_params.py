"""Codec configs <-> `CodecParams` messages, and which wire codec carries them.

Three wire codecs exist (common.proto): DENSE_FP32 (the original raw float32
format, also used for initial weights), DENSE (any value format) and TOPK.
A `Dense(values="fp32")` federation announces DENSE_FP32, so clients that
only know raw float32 keep working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedgrpc._proto.v1 import common_pb2
from fedgrpc.compress import CodecConfig, Dense, TopK, ValueFormat, make_codec
from fedgrpc.domain.requests import WireCodec, wire_codec
from fedgrpc.errors import InvalidUpdateError

WIRE_CODEC_TO_PROTO: dict[WireCodec, common_pb2.Codec.ValueType] = {
    "dense-fp32": common_pb2.CODEC_DENSE_FP32,
    "dense": common_pb2.CODEC_DENSE,
    "topk": common_pb2.CODEC_TOPK,
    # Masked ring elements (wire.secagg); never a federation's CodecParams.
    "secagg-ring": common_pb2.CODEC_SECAGG_RING,
}
WIRE_CODEC_FROM_PROTO = {v: k for k, v in WIRE_CODEC_TO_PROTO.items()}
_FORMAT_TO_PROTO: dict[ValueFormat, common_pb2.ValueFormat.ValueType] = {
    "fp32": common_pb2.VALUE_FORMAT_FP32,
    "bf16": common_pb2.VALUE_FORMAT_BF16,
    "fp16": common_pb2.VALUE_FORMAT_FP16,
    "int8": common_pb2.VALUE_FORMAT_INT8,
    "int4": common_pb2.VALUE_FORMAT_INT4,
    "int2": common_pb2.VALUE_FORMAT_INT2,
}
_FORMAT_FROM_PROTO = {v: k for k, v in _FORMAT_TO_PROTO.items()}
_TOPK_BITS: dict[ValueFormat, Literal[2, 4, 8, 16, 32]] = {
    "int2": 2,
    "int4": 4,
    "int8": 8,
    "bf16": 16,
    "fp32": 32,
}


def codec_params_to_proto(
    config: CodecConfig, chunk_bytes: int, feedback_decay: float = 1.0
) -> common_pb2.CodecParams:
    """The announced codec, with the block size and EF decay clients must use."""
    return common_pb2.CodecParams(
        codec=WIRE_CODEC_TO_PROTO[wire_codec(config)],
        values=_FORMAT_TO_PROTO[config.values],
        density=config.density if isinstance(config, TopK) else 0.0,
        block_coordinates=make_codec(config).block_coordinates(chunk_bytes),
        feedback_decay=feedback_decay,
    )


def codec_params_from_proto(message: common_pb2.CodecParams) -> CodecConfig:
    """Decode announced or requested codec params.

    Raises:
        InvalidUpdateError: unknown codec or value format, or a combination
            the codecs do not support (the message says which).
    """
    codec = WIRE_CODEC_FROM_PROTO.get(message.codec)
    values = _FORMAT_FROM_PROTO.get(message.values)
    if codec == "dense-fp32":
        return Dense(values="fp32")
    if codec is None or values is None or codec == "secagg-ring":
        raise InvalidUpdateError(
            f"unknown codec {message.codec} or value format {message.values}; "
            "this version knows DENSE_FP32, DENSE and TOPK with FP32, BF16, "
            "FP16, INT8, INT4 and INT2 values"
        )
    try:
        if codec == "dense":
            return Dense(values=values)
        if values not in _TOPK_BITS:
            raise InvalidUpdateError(f"top-k does not send {values} values")
        return TopK(density=message.density, bits=_TOPK_BITS[values])
    except ValueError as exc:  # ConfigError: e.g. density out of range
        raise InvalidUpdateError(f"invalid codec params: {exc}") from exc


@dataclass(frozen=True, slots=True)
class CodecBinding:
    """The codec parameters an update's signatures cover (CodecParams numbers)."""

    values: int
    """`CodecParams.values` (a ValueFormat number)."""
    density: float
    """`CodecParams.density` (0 for dense codecs)."""


DENSE_FP32_BINDING = CodecBinding(common_pb2.VALUE_FORMAT_FP32, 0.0)
"""What DENSE_FP32 updates sign: initial weights (always DENSE_FP32, whatever the
federation's codec) and the pseudo-gradients of a `dense:fp32` federation."""


def codec_binding(config: CodecConfig) -> CodecBinding:
    """What signed pseudo-gradients under `config` say about their codec."""
    density = config.density if isinstance(config, TopK) else 0.0
    return CodecBinding(_FORMAT_TO_PROTO[config.values], density)
