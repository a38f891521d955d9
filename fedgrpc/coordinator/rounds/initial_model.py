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

Plain torch, no I/O: `ops.init_model_file` reads the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.errors import ModelMismatchError


@dataclass(frozen=True)
class InitialModel:
    """Initial weights by parameter name, in their own dtypes."""

    source: str
    """Where they came from (the path), for the operator's logs only: Join
    refusals built here go to clients, who must not learn server paths."""
    tensors: dict[str, torch.Tensor]
    dtypes: dict[str, DType]

    @property
    def spec(self) -> ModelSpec:
        """The tensors in the file's order (for status and logs)."""
        return ModelSpec(
            tuple(
                TensorSpec(name, tuple(t.shape), self.dtypes[name])
                for name, t in self.tensors.items()
            )
        )

    def check_matches(self, spec: ModelSpec) -> None:
        """Raise `ModelMismatchError` naming the first tensor that differs.

        Compared by name: the joiner's tensors in its order, then any tensor
        of the file the joiner lacks.
        """
        for mine in spec.tensors:
            theirs = self.tensors.get(mine.name)
            if theirs is None:
                raise ModelMismatchError(
                    f"the model's tensor {mine.name!r} is not in the coordinator's "
                    "initial model (init_model); every client must train the "
                    "architecture the coordinator was started with"
                )
            shape, dtype = tuple(theirs.shape), self.dtypes[mine.name]
            cast = mine.dtype.is_float and dtype.is_float  # bf16 client, f32 file
            if mine.shape != shape or not (mine.dtype is dtype or cast):
                raise ModelMismatchError(
                    f"tensor {mine.name!r} is {list(mine.shape)} "
                    f"{mine.dtype.torch_name} but the coordinator's initial model "
                    f"has {list(shape)} {dtype.torch_name}; every client must train "
                    "the same architecture with the same parameter dtypes"
                )
        names = {t.name for t in spec.tensors} | {a for a, _ in spec.aliases}
        for name in self.tensors:
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

    def coordinates(self, spec: ModelSpec) -> torch.Tensor:
        """The weights as float32 coordinates in `spec`'s layout (check it first)."""
        out = torch.empty(spec.num_coordinates, dtype=torch.float32)
        for slot in spec.slots:
            values = self.tensors[slot.spec.name].reshape(-1)
            out[slot.coord_offset : slot.coord_offset + slot.spec.numel] = values
        return out
