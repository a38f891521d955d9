"""The dense codec: every coordinate of a block, in one value format.

Payload of a block of `count` coordinates is exactly the value section of
`fedgrpc.compress.quantize` (fp32: 4*count bytes; int8: 4 + count; ...), so
its length alone says whether it is well formed.
"""

from __future__ import annotations

import numpy as np

from fedgrpc.compress.blocks import (
    DenseValues,
    EncodedBlock,
    F32Array,
    check_block,
    check_count,
)
from fedgrpc.compress.int2 import INT2_GROUP
from fedgrpc.compress.quantize import (
    QMAX,
    SCALE_BYTES,
    SCALE_GROUP,
    decode_values,
    encode_values,
    value_bytes,
)
from fedgrpc.domain.codecs import ValueFormat
from fedgrpc.errors import ConfigError


class DenseCodec:
    """`BlockCodec` for `Dense(values=...)`.

    `encode` is not thread-safe (it draws from `rng`); `decode` is.
    """

    def __init__(self, values: ValueFormat, rng: np.random.Generator) -> None:
        self.values: ValueFormat = values
        self._rng = rng

    def block_coordinates(self, chunk_bytes: int) -> int:
        """As many coordinates as fit `chunk_bytes` of payload.

        int8/int4/int2 take whole scale groups (4,096 values; int2 128), so
        that only a tensor's last block has a partial group; fp formats fill
        exactly.

        Raises:
            ConfigError: `chunk_bytes` cannot hold even one coordinate.
        """
        if self.values in QMAX or self.values == "int2":
            group = INT2_GROUP if self.values == "int2" else SCALE_GROUP
            groups = chunk_bytes // value_bytes(self.values, group)
            per_byte = {"int8": 1, "int4": 2, "int2": 4}[self.values]
            coordinates = groups * group or (chunk_bytes - SCALE_BYTES) * per_byte
        else:
            coordinates = chunk_bytes // value_bytes(self.values, 1)
        if coordinates < 1:
            raise ConfigError(
                f"chunk_bytes={chunk_bytes} is invalid: too small for one dense "
                f"{self.values} coordinate"
            )
        return coordinates

    def encode(self, block: F32Array) -> EncodedBlock:
        """Write every value of `block` (1-D float32, finite).

        Raises:
            InvalidUpdateError: `block` holds NaN or Inf.
        """
        check_block(block)
        payload = encode_values(block, self.values, self._rng)
        return EncodedBlock(payload, self.decode(payload, block.size))

    def decode(self, payload: bytes | memoryview, count: int) -> DenseValues:
        """All `count` values of the block; arrays may be read-only views.

        Raises:
            InvalidUpdateError: length, scale, codes or values are invalid.
        """
        check_count(count)
        view = memoryview(payload).cast("B")
        return DenseValues(decode_values(view, self.values, count))

    def estimated_bytes(self, num_coordinates: int) -> int:
        """Exact payload bytes of one block of `num_coordinates`."""
        return value_bytes(self.values, num_coordinates)
