"""Applying a compressed downlink: the coordinator's steps added to the weights held.

With `downlink_codec` on, a pull that names the version it holds gets the
encoded steps from there (`coordinator.rounds.downlink`) instead of the
weights. Each block decodes to float32 values that are added, in stream
order, to the float32 coordinates of the pulled-weights buffer: the same
decode and the same float32 addition the coordinator did to its master, so
the result is its master bit for bit. The caller then checks the SHA-256 of
the whole buffer against the signed one, which proves it (and catches a
buffer that did not hold the version it claimed).
"""

from __future__ import annotations

import numpy as np
import torch

from fedgrpc._proto.v1 import coordinator_pb2
from fedgrpc.compress import make_codec, parse_codec
from fedgrpc.domain.model_spec import DType, ModelSpec
from fedgrpc.errors import ConfigError, InvalidUpdateError


class DeltaMismatchError(InvalidUpdateError):
    """The steps applied do not give the signed weights: pull the whole model."""


class DeltaApplier:
    """Adds the decoded blocks of versions `held + 1 .. version` to `buffer`.

    Validates the stream as it goes: versions in order, each one's blocks
    contiguous and covering every coordinate exactly once.
    """

    def __init__(
        self,
        spec: ModelSpec,
        buffer: torch.Tensor,
        held: int,
        version: int,
        codec_spec: str,
    ) -> None:
        """Steps from `held` to `version` in codec `codec_spec` into `buffer`.

        Raises:
            InvalidUpdateError: the model is not all float32 (its bytes are
                not the coordinates the steps add to), or an unknown codec.
        """
        if not all(t.dtype is DType.FLOAT32 for t in spec.tensors):
            raise InvalidUpdateError(
                "the coordinator sent compressed model steps for a model that is "
                "not all float32: only float32 weights can take them"
            )
        try:
            self._codec = make_codec(parse_codec(codec_spec))
        except ConfigError as exc:
            raise InvalidUpdateError(f"ModelHeader.delta_codec: {exc}") from None
        self._weights = buffer.numpy().view(np.float32)
        self._size = spec.num_coordinates
        self._last = version
        self._version = held
        """The version the blocks accepted so far belong to."""
        self._next = self._size
        """Next coordinate expected of `_version` (its end: that one is done)."""
        self.bytes_received = 0
        """Payload bytes of the blocks accepted."""

    def accept(self, delta: coordinator_pb2.ModelDelta) -> None:
        """Decode one block and add it into the weights.

        Raises:
            InvalidUpdateError: a version out of order, a block that leaves a
                gap, overlaps or runs past the model, or a payload the codec
                refuses.
        """
        if self._next == self._size:  # the previous version is complete
            self._version, self._next = self._version + 1, 0
        if delta.version != self._version or self._version > self._last:
            raise InvalidUpdateError(
                f"PullModel sent a step block of version {delta.version}, expected "
                f"version {self._version} (steps up to {self._last})"
            )
        offset, count = delta.offset, delta.count
        if offset != self._next or count == 0 or offset + count > self._size:
            raise InvalidUpdateError(
                f"PullModel sent a step block at coordinates {offset}..{offset + count}"
                f" of version {delta.version}, expected one from {self._next} "
                f"within {self._size}"
            )
        payload = delta.payload  # upb copies on every read: read once
        decoded = self._codec.decode(payload, count)
        decoded.add_into(self._weights[offset : offset + count])
        self._next = offset + count
        self.bytes_received += len(payload)

    @property
    def is_complete(self) -> bool:
        """Every block of every version up to the served one was applied."""
        return self._version == self._last and self._next == self._size
