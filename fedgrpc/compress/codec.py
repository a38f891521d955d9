"""The `BlockCodec` protocol every codec implements, and `make_codec`.

How the pieces meet on the data path (model → compress → wire → gRPC →
aggregate): the client cuts its flat update into blocks of
`block_coordinates(chunk_bytes)` coordinates, `encode`s each (through
`ErrorFeedback` for top-k) and the wire sends (offset, count, payload) per
message; the coordinator `decode`s each payload with the same codec and adds
the result into its running sum with `DecodedBlock.add_into`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from fedgrpc.compress.blocks import DecodedBlock, EncodedBlock, F32Array
from fedgrpc.compress.dense import DenseCodec
from fedgrpc.compress.topk import TopKCodec
from fedgrpc.domain.codecs import CodecConfig, Dense


class BlockCodec(Protocol):
    """Turns one block (a contiguous float32 slice of an update) into bytes and back.

    Codecs are built from a config by `make_codec`; both sides of a round
    build them from the same announced config, so a payload carries no codec
    parameters of its own.
    """

    def block_coordinates(self, chunk_bytes: int) -> int:
        """Coordinates per block such that a payload never exceeds `chunk_bytes`.

        Dense codecs fill `chunk_bytes` exactly; top-k uses 65,536 (fewer
        only if the worst case would not fit). The last block of a tensor
        may be shorter.
        """
        ...

    def encode(self, block: F32Array) -> EncodedBlock:
        """Encode a 1-D float32 block of finite values.

        Returns the payload and `sent`, bit-for-bit what `decode` will yield,
        for the client's error-feedback residual. Not thread-safe.

        Raises:
            InvalidUpdateError: the block holds NaN or Inf.
            ValueError: the block is not a 1-D float32 array.
        """
        ...

    def decode(self, payload: bytes | memoryview, count: int) -> DecodedBlock:
        """Decode and fully validate a payload for a block of `count` coordinates.

        Thread-safe. Returned arrays may be read-only views of `payload`.

        Raises:
            InvalidUpdateError: anything inconsistent (length, k, scale, codes,
                indices, NaN/Inf); the wire maps it to INVALID_ARGUMENT after
                prefixing the tensor and chunk.
        """
        ...

    def estimated_bytes(self, num_coordinates: int) -> int:
        """Payload bytes of one block of `num_coordinates` (exact for dense)."""
        ...


def make_codec(
    config: CodecConfig, *, rng: np.random.Generator | None = None
) -> BlockCodec:
    """Build the codec `config` describes.

    Args:
        config: `Dense(...)` or `TopK(...)`.
        rng: drives stochastic rounding (int8/int4); encoding is
            deterministic given its seed. None draws fresh OS entropy, the
            right default for clients: a seed shared by every client would
            correlate their rounding noise, which then no longer averages out.
    """
    generator = rng if rng is not None else np.random.default_rng()
    if isinstance(config, Dense):
        return DenseCodec(config.values, generator)
    return TopKCodec(config.density, config.values, generator)
