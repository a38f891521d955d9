"""The model spec: which tensors, in which order, and where each lives on the wire.

A federation agrees on one `ModelSpec`. Its tensor order defines two flat
layouts that every transfer uses:

* the *coordinate* space: every tensor flattened (row-major) and concatenated,
  one float32 per coordinate. Pseudo-gradients, the coordinator's running sum
  and its master weights live here.
* the *native byte* space: every tensor's bytes in its own dtype,
  concatenated. Weights go back to clients in this layout so a bfloat16
  model costs half the downlink of a float32 one.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import math
import struct
from dataclasses import dataclass, field
from functools import cached_property

from fedgrpc.errors import InvalidUpdateError, ModelMismatchError

MAX_TENSORS = 100_000
"""More tensors than any real model has; guards Join against absurd specs."""
MAX_COORDINATES = 1 << 40
"""About 4 TB of float32: a guard against overflowed shapes, not a real limit."""
_SPEC_DOMAIN = b"fedgrpc.v1.ModelSpec"


class DType(enum.Enum):
    """Parameter element types a federation can carry, with their byte widths."""

    FLOAT32 = ("float32", 4)
    FLOAT16 = ("float16", 2)
    BFLOAT16 = ("bfloat16", 2)
    FLOAT64 = ("float64", 8)

    def __init__(self, torch_name: str, itemsize: int) -> None:
        self.torch_name = torch_name
        self.itemsize = itemsize


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One parameter: name, shape (empty for 0-d) and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: DType

    @property
    def numel(self) -> int:
        """Number of elements (1 for a 0-d tensor, 0 for an empty one)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes in the native dtype."""
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True, slots=True)
class TensorSlot:
    """Where one tensor sits in the coordinate and native-byte spaces."""

    spec: TensorSpec
    coord_offset: int
    byte_offset: int


@dataclass(frozen=True)
class ModelSpec:
    """An ordered set of tensors; equality and `digest` cover names, shapes, dtypes."""

    tensors: tuple[TensorSpec, ...]
    _digest: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        validate_tensors(self.tensors)
        object.__setattr__(self, "_digest", _compute_digest(self.tensors))

    @property
    def digest(self) -> bytes:
        """SHA-256 over a canonical, length-prefixed encoding of the tensors."""
        return self._digest

    @cached_property
    def slots(self) -> tuple[TensorSlot, ...]:
        """Each tensor's offsets in both flat spaces, in spec order."""
        slots, coord, byte = [], 0, 0
        for tensor in self.tensors:
            slots.append(TensorSlot(tensor, coord, byte))
            coord += tensor.numel
            byte += tensor.nbytes
        return tuple(slots)

    @cached_property
    def num_coordinates(self) -> int:
        """Length of the flat coordinate vector (total parameter count)."""
        return sum(t.numel for t in self.tensors)

    @cached_property
    def num_bytes(self) -> int:
        """Total native bytes (the downlink payload of one full model)."""
        return sum(t.nbytes for t in self.tensors)

    def tensor_at(self, coordinate: int) -> TensorSpec:
        """The tensor holding flat `coordinate` (for error messages).

        Raises:
            IndexError: `coordinate` is outside [0, num_coordinates).
        """
        if not 0 <= coordinate < self.num_coordinates:
            raise IndexError(f"coordinate {coordinate} is outside the model")
        starts = [slot.coord_offset for slot in self.slots if slot.spec.numel]
        tensors = [slot.spec for slot in self.slots if slot.spec.numel]
        return tensors[bisect.bisect_right(starts, coordinate) - 1]

    def check_same_as(self, other: ModelSpec) -> None:
        """Raise `ModelMismatchError` naming the first difference from `other`."""
        if self.digest == other.digest:
            return
        for index, (mine, theirs) in enumerate(
            zip(self.tensors, other.tensors, strict=False)
        ):
            if mine != theirs:
                raise ModelMismatchError(
                    f"tensor {index} is {_describe(mine)} but the federation's model "
                    f"has {_describe(theirs)}; every client must train the same "
                    "architecture with the same parameter dtypes"
                )
        raise ModelMismatchError(
            f"the model has {len(self.tensors)} parameter tensors but the "
            f"federation's model has {len(other.tensors)}; every client must "
            "train the same architecture"
        )


def _describe(tensor: TensorSpec) -> str:
    return f"{tensor.name!r} {list(tensor.shape)} {tensor.dtype.torch_name}"


def validate_tensors(tensors: tuple[TensorSpec, ...]) -> None:
    """Reject specs no real model has: none, duplicates, blank names, huge sizes."""
    if not tensors:
        raise InvalidUpdateError(
            "the model spec lists no tensors; the model needs trainable parameters"
        )
    if len(tensors) > MAX_TENSORS:
        raise InvalidUpdateError(
            f"the model spec lists {len(tensors)} tensors, over the limit of "
            f"{MAX_TENSORS}"
        )
    names = {t.name for t in tensors}
    if len(names) != len(tensors):
        raise InvalidUpdateError("the model spec repeats a tensor name")
    if "" in names:
        raise InvalidUpdateError("the model spec has a tensor with an empty name")
    if sum(t.numel for t in tensors) > MAX_COORDINATES:
        raise InvalidUpdateError(
            f"the model spec has more than {MAX_COORDINATES} parameters"
        )


def _compute_digest(tensors: tuple[TensorSpec, ...]) -> bytes:
    """Hash a canonical encoding: fields length-prefixed, so no two specs collide."""
    hasher = hashlib.sha256(_SPEC_DOMAIN)
    hasher.update(struct.pack("<Q", len(tensors)))
    for tensor in tensors:
        name = tensor.name.encode()
        dtype = tensor.dtype.torch_name.encode()
        hasher.update(struct.pack("<Q", len(name)) + name)
        hasher.update(struct.pack("<Q", len(dtype)) + dtype)
        hasher.update(
            struct.pack(f"<Q{len(tensor.shape)}Q", len(tensor.shape), *tensor.shape)
        )
    return hasher.digest()
