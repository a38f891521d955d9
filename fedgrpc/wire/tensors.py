"""Torch tensors <-> the flat spaces of a `ModelSpec`.

Every function here loops over *tensors* (hundreds at most), never over
elements: each tensor moves with one vectorised copy or cast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedgrpc.domain.fragments import byte_of_coordinate
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.errors import ConfigError, InvalidUpdateError

_TORCH_DTYPES: dict[DType, torch.dtype] = {
    DType.FLOAT32: torch.float32,
    DType.FLOAT16: torch.float16,
    DType.BFLOAT16: torch.bfloat16,
    DType.FLOAT64: torch.float64,
    DType.INT64: torch.int64,
    DType.INT32: torch.int32,
}
_DTYPES_BY_TORCH = {v: k for k, v in _TORCH_DTYPES.items()}


def torch_dtype(dtype: DType) -> torch.dtype:
    """The torch dtype of a spec dtype."""
    return _TORCH_DTYPES[dtype]


def spec_from_module(model: torch.nn.Module) -> ModelSpec:
    """Describe `model`'s parameters (by name, in `named_parameters()` order).

    Every parameter, frozen or not, and no buffers: the layout of a model
    federated with `federate="all", buffers="local"`. Clients choose their
    tensors with `fedgrpc.client.tensors.select_tensors`.

    Raises:
        ConfigError: the model has no parameters, or one is not float16,
            bfloat16, float32 or float64 (integer parameters cannot be averaged).
    """
    named = list(model.named_parameters())
    return spec_from_tensors([(name, p, False) for name, p in named])


def spec_from_tensors(
    tensors: Sequence[tuple[str, torch.Tensor, bool]],
    aliases: tuple[tuple[str, str], ...] = (),
) -> ModelSpec:
    """Describe (name, tensor, is_buffer) triples, in the given order.

    Raises:
        ConfigError: none given, a parameter is not a float, or a buffer is
            neither a float nor int64/int32.
    """
    specs = []
    for name, tensor, buffer in tensors:
        dtype = _DTYPES_BY_TORCH.get(tensor.dtype)
        if dtype is None or not (dtype.is_float or buffer):
            kinds = "float16, bfloat16, float32 and float64 parameters" + (
                ", int64 and int32 buffers" if buffer else ""
            )
            raise ConfigError(
                f"{'buffer' if buffer else 'parameter'} {name!r} has dtype "
                f"{tensor.dtype}; fedgrpc federates {kinds} only"
            )
        shape = tuple(int(d) for d in tensor.shape)
        specs.append(TensorSpec(name, shape, dtype, buffer))
    if not specs:
        raise ConfigError("the model has no parameters to federate")
    return ModelSpec(tuple(specs), aliases)


def federable_dtype(tensor: torch.Tensor, buffer: bool) -> bool:
    """Whether a tensor of this dtype can travel (as a buffer if `buffer`)."""
    dtype = _DTYPES_BY_TORCH.get(tensor.dtype)
    return dtype is not None and (dtype.is_float or buffer)


def flatten_fp32(
    tensors: Sequence[torch.Tensor], spec: ModelSpec, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Concatenate `tensors` (spec order) into one float32 CPU vector.

    `out`, if given, is reused (a model-sized buffer allocated once per client).
    """
    if out is None:
        out = torch.empty(spec.num_coordinates, dtype=torch.float32)
    for slot, tensor in zip(spec.slots, tensors, strict=True):
        n = slot.spec.numel
        out[slot.coord_offset : slot.coord_offset + n].copy_(
            tensor.detach().reshape(-1)
        )
    return out


def load_flat_fp32(
    tensors: Sequence[torch.Tensor], spec: ModelSpec, flat: torch.Tensor
) -> None:
    """Copy `flat` into `tensors` in place, cast to each tensor's dtype and device."""
    with torch.no_grad():
        for slot, tensor in zip(spec.slots, tensors, strict=True):
            n = slot.spec.numel
            view = flat[slot.coord_offset : slot.coord_offset + n].view(tensor.shape)
            tensor.copy_(view if tensor.is_floating_point() else view.round())


def pack_native(flat: torch.Tensor, spec: ModelSpec, start: int = 0) -> torch.Tensor:
    """The native-byte layout of `flat` (float32 coordinates): a uint8 tensor.

    Each tensor is cast to its own dtype, so float32 tensors are copied
    bit-exactly and half-precision ones take half the bytes. `flat` may be
    the coordinates `start..start + len(flat)` only (a parameter shard's
    range): the bytes are then those of that range, which may begin or end
    inside a tensor.
    """
    stop = start + flat.numel()
    first = byte_of_coordinate(spec, start)
    out = torch.empty(byte_of_coordinate(spec, stop) - first, dtype=torch.uint8)
    for slot in spec.slots:
        lo = max(start, slot.coord_offset)
        hi = min(stop, slot.coord_offset + slot.spec.numel)
        if lo >= hi:
            continue
        values = flat[lo - start : hi - start]
        if not slot.spec.dtype.is_float:  # an averaged counter: nearest integer
            values = values.round()
        cast = values.to(torch_dtype(slot.spec.dtype)).view(torch.uint8)
        at = slot.byte_offset + (lo - slot.coord_offset) * slot.spec.dtype.itemsize
        out[at - first : at - first + cast.numel()].copy_(cast)
    return out


def unpack_native(buffer: torch.Tensor, spec: ModelSpec) -> list[torch.Tensor]:
    """Views of a native-byte buffer (uint8) as the spec's tensors (copy if unaligned).

    Raises:
        InvalidUpdateError: the buffer length is not the spec's `num_bytes`.
    """
    if buffer.numel() != spec.num_bytes:
        raise InvalidUpdateError(
            f"model buffer has {buffer.numel()} bytes, the spec needs {spec.num_bytes}"
        )
    tensors = []
    for slot in spec.slots:
        raw = buffer[slot.byte_offset : slot.byte_offset + slot.spec.nbytes]
        if slot.byte_offset % slot.spec.dtype.itemsize:
            # Mixed-dtype models can leave a tensor unaligned for its dtype;
            # torch cannot view that, so this one tensor is copied.
            raw = raw.clone()
        tensors.append(raw.view(torch_dtype(slot.spec.dtype)).view(slot.spec.shape))
    return tensors
