"""The run's initial weights from a file, laid out when the first client joins.

`--init-model` names the tensors, shapes and dtypes of the federation; a
joiner's model must have exactly those (by name), or Join fails with
`ModelMismatchError` naming the first tensor that differs. The flat layout
(which tensor comes first in the coordinate space) follows the first
joiner's parameter order, not the file's: safetensors files store tensors
sorted by name (`safetensors.torch.save_file` does), while a client's spec
follows `model.named_parameters()`, and every client of one architecture
lists its parameters in the same order. So the file decides the weights and
the spec; the first joiner decides nothing but where each tensor sits.

A parameter shard (`shard = "I/N"`) keeps only its own range, and that
range is known only once the first joiner fixed the layout. So the weights
are not held from start to first Join: a `TensorSource` reads just the
parts of tensors that fall into the range when `coordinates` asks for them
(safetensors: those rows of each tensor; a checkpoint, whose body is checked
whole: loaded, sliced, the rest dropped at once).

Plain torch, no I/O: `ops.init_model_file` reads the file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from fedgrpc.domain.fragments import Fragment
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.errors import ModelMismatchError

TensorPart = tuple[str, int, int]
"""(tensor name, first flat element, stop): a piece of one tensor."""
PIECE_ELEMENTS = 1 << 22
"""Largest piece read at once (16 MiB of float32): what reading adds to the
process's peak memory, whatever the tensor's size. Measured checking a
100.7M-parameter file at start: the peak grew by 246 MB with 64 MiB pieces,
105 MB with 16 MiB ones, 30 MB with 4 MiB ones (which took 3x as long)."""


class TensorSource(Protocol):
    """Where the initial weights are read from, a piece at a time."""

    def read(self, parts: Sequence[TensorPart]) -> Iterator[torch.Tensor]:
        """Each part's flat elements, in the tensor's own dtype, in order.

        Yields one part at a time: the caller copies it before the next.
        """
        ...


@dataclass(frozen=True)
class InitialModel:
    """Initial weights by parameter name, in their own dtypes (read on demand)."""

    source: str
    """Where they came from (the path), for the operator's logs only: Join
    refusals built here go to clients, who must not learn server paths."""
    shapes: dict[str, tuple[int, ...]]
    """Each tensor's shape, in the file's order."""
    dtypes: dict[str, DType]
    reader: TensorSource

    @property
    def spec(self) -> ModelSpec:
        """The tensors in the file's order (for status and logs)."""
        return ModelSpec(
            tuple(
                TensorSpec(name, shape, self.dtypes[name])
                for name, shape in self.shapes.items()
            )
        )

    def check_matches(self, spec: ModelSpec) -> None:
        """Raise `ModelMismatchError` naming the first tensor that differs.

        Compared by name: the joiner's tensors in its order, then any tensor
        of the file the joiner lacks.
        """
        for mine in spec.tensors:
            theirs = self.shapes.get(mine.name)
            if theirs is None:
                raise ModelMismatchError(
                    f"the model's tensor {mine.name!r} is not in the coordinator's "
                    "initial model (init_model); every client must train the "
                    "architecture the coordinator was started with"
                )
            shape, dtype = theirs, self.dtypes[mine.name]
            cast = mine.dtype.is_float and dtype.is_float  # bf16 client, f32 file
            if mine.shape != shape or not (mine.dtype is dtype or cast):
                raise ModelMismatchError(
                    f"tensor {mine.name!r} is {list(mine.shape)} "
                    f"{mine.dtype.torch_name} but the coordinator's initial model "
                    f"has {list(shape)} {dtype.torch_name}; every client must train "
                    "the same architecture with the same parameter dtypes"
                )
        names = {t.name for t in spec.tensors} | {a for a, _ in spec.aliases}
        for name in self.shapes:
            if name not in names:
                raise ModelMismatchError(
                    f"the coordinator's initial model has tensor {name!r}, which "
                    "the model lacks; every client must train the same architecture"
                )

    def federation_spec(self, spec: ModelSpec) -> ModelSpec:
        """`spec`'s layout with the file's dtypes (check it first).

        The file decides the weights and their dtypes, the joiner only where
        each tensor sits: a bfloat16 joiner of a float32 file makes a float32
        federation that it (and every later joiner) casts from.
        """
        return ModelSpec(
            tuple(
                TensorSpec(t.name, t.shape, self.dtypes[t.name], t.buffer)
                for t in spec.tensors
            ),
            spec.aliases,
        )

    def coordinates(
        self, spec: ModelSpec, held: Fragment | None = None
    ) -> torch.Tensor:
        """The weights as float32 coordinates in `spec`'s layout (check it first).

        `held`: only that coordinate range (a shard's), read from the source
        alone; None: the whole model.
        """
        start = 0 if held is None else held.coord_start
        stop = spec.num_coordinates if held is None else held.coord_stop
        out = torch.empty(stop - start, dtype=torch.float32)
        parts, places = [], []
        for slot in spec.slots:
            lo = max(start, slot.coord_offset)
            hi = min(stop, slot.coord_offset + slot.spec.numel)
            for piece in range(lo, hi, PIECE_ELEMENTS):
                end = min(hi, piece + PIECE_ELEMENTS)
                first = piece - slot.coord_offset
                parts.append((slot.spec.name, first, first + end - piece))
                places.append(piece - start)
        for place, values in zip(places, self.reader.read(parts), strict=True):
            out[place : place + values.numel()] = values
        return out
