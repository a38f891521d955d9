"""Update compression: codecs for blocks of a flat float32 update, and error feedback.

A leaf of the data path (model → **compress** → wire → gRPC → aggregate →
optim): it knows numpy and bytes, never protobuf or gRPC. The wire layer
sends each block as (offset, count, payload) and maps `InvalidUpdateError`
to INVALID_ARGUMENT.

Typical client use::

    codec = make_codec(TopK(density=0.01, bits=8), rng=np.random.default_rng(seed))
    feedback = ErrorFeedback(num_coordinates)
    feedback.accumulate(delta)                       # e += Δ
    for block in feedback.encode_blocks(codec, chunk_bytes):
        send(block.offset, block.count, block.encoded.payload)  # e -= sent done

and on the coordinator, per received block::

    codec.decode(payload, count).add_into(total[offset : offset + count], weight)

Only the codec specs (`Dense`, `TopK`, `parse_codec`, ...) are imported
eagerly: they are what configs and the CLI need, and the codecs behind them
pull in torch, which costs a command-line tool ~1.5 s. The rest loads on
first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedgrpc.domain.codecs import (
    VALUE_FORMATS,
    CodecConfig,
    Dense,
    TopK,
    ValueFormat,
    format_codec,
    parse_codec,
)

if TYPE_CHECKING:
    from fedgrpc.compress.blocks import (
        MAX_BLOCK_COORDINATES,
        DecodedBlock,
        DenseValues,
        EncodedBlock,
        SparseValues,
    )
    from fedgrpc.compress.codec import BlockCodec, make_codec
    from fedgrpc.compress.error_feedback import ErrorFeedback, OffsetBlock
    from fedgrpc.compress.topk import TOPK_BLOCK_COORDINATES

_LAZY = {
    "MAX_BLOCK_COORDINATES": "blocks",
    "DecodedBlock": "blocks",
    "DenseValues": "blocks",
    "EncodedBlock": "blocks",
    "SparseValues": "blocks",
    "BlockCodec": "codec",
    "make_codec": "codec",
    "ErrorFeedback": "error_feedback",
    "OffsetBlock": "error_feedback",
    "TOPK_BLOCK_COORDINATES": "topk",
}

__all__ = [
    "MAX_BLOCK_COORDINATES",
    "TOPK_BLOCK_COORDINATES",
    "VALUE_FORMATS",
    "BlockCodec",
    "CodecConfig",
    "DecodedBlock",
    "Dense",
    "DenseValues",
    "EncodedBlock",
    "ErrorFeedback",
    "OffsetBlock",
    "SparseValues",
    "TopK",
    "ValueFormat",
    "format_codec",
    "make_codec",
    "parse_codec",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fedgrpc.compress' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fedgrpc.compress.{module}"), name)
    globals()[name] = value  # later lookups skip this hook
    return value
