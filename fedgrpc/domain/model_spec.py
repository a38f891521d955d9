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
    """Tensor element types a federation can carry, with their byte widths.

    Integers exist for buffers only (BatchNorm's `num_batches_tracked`):
    they travel as float32 coordinates like everything else, exact up to
    2^24, and are rounded to the nearest integer on the way back.
    """

    FLOAT32 = ("float32", 4)
    FLOAT16 = ("float16", 2)
    BFLOAT16 = ("bfloat16", 2)
    FLOAT64 = ("float64", 8)
    INT64 = ("int64", 8)
    INT32 = ("int32", 4)

    def __init__(self, torch_name: str, itemsize: int) -> None:
        self.torch_name = torch_name
        self.itemsize = itemsize

    @property
    def is_float(self) -> bool:
        """Whether values are floating point (integers are rounded on load)."""
        return self.torch_name.startswith(("float", "bfloat"))


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One tensor: name, shape (empty for 0-d), dtype, and whether a buffer.

    Buffers (BatchNorm's running statistics) are averaged, not stepped: the
    outer optimizer leaves them alone and the coordinator sets them to the
    clients' weighted mean (`GlobalModel.step`).
    """

    name: str
    shape: tuple[int, ...]
    dtype: DType
    buffer: bool = False

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
    """An ordered set of tensors; equality and `digest` cover names, shapes, dtypes.

    `aliases` are other names of tensors in the spec: a tied weight
    (`lm_head.weight` that *is* `embed.weight`) travels once, under its
    first name, and exports under both. They are not in the digest: two
    clients of one architecture tie the same weights, and the tensors they
    send are the same either way.
    """

    tensors: tuple[TensorSpec, ...]
    aliases: tuple[tuple[str, str], ...] = ()
    """(alias, the name it refers to), in the model's order."""
    _digest: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        validate_tensors(self.tensors)
        validate_aliases(self.aliases, self.tensors)
        object.__setattr__(self, "_digest", _compute_digest(self.tensors))

    @cached_property
    def buffer_slots(self) -> tuple[TensorSlot, ...]:
        """The slots of buffers (averaged, never stepped), in spec order."""
        return tuple(slot for slot in self.slots if slot.spec.buffer)

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

    def casts_to(self, other: ModelSpec) -> bool:
        """True if the specs differ at most in floating-point dtypes.

        Same names, order, shapes and kinds: a bfloat16 client can then
        train in a float32 federation (it casts what it pulls; see
        `client.weights.LocalRun.adopt_wire_spec`).
        """
        return len(self.tensors) == len(other.tensors) and all(
            (a.name, a.shape, a.buffer) == (b.name, b.shape, b.buffer)
            and (a.dtype is b.dtype or (a.dtype.is_float and b.dtype.is_float))
            for a, b in zip(self.tensors, other.tensors, strict=True)
        )

    def check_same_as(self, other: ModelSpec, *, allow_casts: bool = False) -> None:
        """Raise `ModelMismatchError` naming the first difference from `other`.

        Names first (a tensor one side sends and the other does not: a
        different architecture, or clients that disagree on `federate`,
        `buffers` or `local_modules`), then the first tensor that differs.
        With `allow_casts`, floating-point dtypes may differ (`casts_to`).
        """
        if self.digest == other.digest or (allow_casts and self.casts_to(other)):
            return
        _check_same_names(self, other)
        for index, (mine, theirs) in enumerate(
            zip(self.tensors, other.tensors, strict=False)
        ):
            if mine != theirs:
                raise ModelMismatchError(
                    f"tensor {index} is {_describe(mine)} but the federation's model "
                    f"has {_describe(theirs)}; {_remedy(mine, theirs)}"
                )
        raise ModelMismatchError(
            f"the model has {len(self.tensors)} parameter tensors but the "
            f"federation's model has {len(other.tensors)}; every client must "
            "train the same architecture"
        )


def _describe(tensor: TensorSpec) -> str:
    kind = " buffer" if tensor.buffer else ""
    return f"{tensor.name!r} {list(tensor.shape)} {tensor.dtype.torch_name}{kind}"


def _remedy(mine: TensorSpec, theirs: TensorSpec) -> str:
    """What to change, for the one difference found."""
    if (mine.name, mine.shape, mine.buffer) == (
        theirs.name,
        theirs.shape,
        theirs.buffer,
    ):
        return (
            f"the tensors differ only in dtype ({mine.dtype.torch_name} here, "
            f"{theirs.dtype.torch_name} in the federation): every client must hold "
            "the federation's dtypes (cast the model, e.g. model.to(torch."
            f"{theirs.dtype.torch_name}), and use autocast for lower-precision "
            "compute)"
        )
    return "every client must train the same architecture with the same dtypes"


_SHARING_HINT = (
    "every client must train the same architecture and agree on which tensors "
    "travel (ClientConfig federate, buffers and local_modules)"
)


def _check_same_names(mine: ModelSpec, theirs: ModelSpec) -> None:
    """Name the first tensor only one side sends (ModelMismatchError)."""
    their_names = {t.name for t in theirs.tensors}
    for tensor in mine.tensors:
        if tensor.name not in their_names:
            raise ModelMismatchError(
                f"the model sends tensor {_describe(tensor)}, which the federation's "
                f"model does not have; {_SHARING_HINT}"
            )
    my_names = {t.name for t in mine.tensors}
    for tensor in theirs.tensors:
        if tensor.name not in my_names:
            raise ModelMismatchError(
                f"the federation's model has tensor {_describe(tensor)}, which this "
                f"model does not send; {_SHARING_HINT}"
            )


def validate_aliases(
    aliases: tuple[tuple[str, str], ...], tensors: tuple[TensorSpec, ...]
) -> None:
    """Each alias a new name for a tensor of the spec, given once."""
    if len(aliases) > MAX_TENSORS:
        raise InvalidUpdateError(
            f"the model spec lists {len(aliases)} aliases, over the limit of "
            f"{MAX_TENSORS}"
        )
    names = {t.name for t in tensors}
    seen: set[str] = set()
    for alias, target in aliases:
        if alias in names or alias in seen or not alias:
            raise InvalidUpdateError(
                f"model spec alias {alias!r} is empty, repeated or a tensor's name"
            )
        if target not in names:
            raise InvalidUpdateError(
                f"model spec alias {alias!r} refers to {target!r}, not in the spec"
            )
        seen.add(alias)


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
        # A buffer's dtype field reads "buffer:<dtype>": still length-prefixed,
        # and every parameter-only spec keeps the digest it always had.
        kind = b"buffer:" if tensor.buffer else b""
        dtype = kind + tensor.dtype.torch_name.encode()
        hasher.update(struct.pack("<Q", len(name)) + name)
        hasher.update(struct.pack("<Q", len(dtype)) + dtype)
        hasher.update(
            struct.pack(f"<Q{len(tensor.shape)}Q", len(tensor.shape), *tensor.shape)
        )
    return hasher.digest()


_DTYPES_BY_NAME = {dtype.torch_name: dtype for dtype in DType}


def spec_rows(spec: ModelSpec) -> list[list[object]]:
    """The spec as JSON rows: [name, shape, dtype], plus `true` for a buffer.

    Parameter rows keep the three fields checkpoints always had, so older
    readers and older checkpoints both still work.
    """
    return [
        [t.name, list(t.shape), t.dtype.torch_name, *((True,) if t.buffer else ())]
        for t in spec.tensors
    ]


def spec_from_rows(
    rows: list[list[object]], aliases: list[list[str]] | None = None
) -> ModelSpec:
    """Inverse of `spec_rows` (with `ModelSpec.aliases` as [alias, target] rows).

    Raises:
        KeyError, TypeError, ValueError: a malformed row (the caller names the file).
    """
    tensors = []
    for row in rows:
        name, shape, dtype, *rest = row
        if not isinstance(name, str) or not isinstance(shape, list):
            raise TypeError(f"bad model spec row {row!r}")
        buffer = bool(rest and rest[0])
        tensors.append(
            TensorSpec(
                name, tuple(int(d) for d in shape), _DTYPES_BY_NAME[str(dtype)], buffer
            )
        )
    pairs = tuple((str(a), str(t)) for a, t in aliases or [])
    return ModelSpec(tuple(tensors), pairs)
