"""Export a checkpoint's global model as a plain `state_dict` file.

Two formats, both keyed by the parameter names the clients' models use:

* `torch`: `torch.save` of a dict of tensors, for `torch.load(path,
  weights_only=True)` then `model.load_state_dict(...)`.
* `safetensors`: the safetensors layout (8-byte header length, JSON header,
  raw little-endian data), written here directly: the format is a page long
  and needs no extra dependency to *write*; `safetensors.torch.load_file`
  reads it, and nothing in it is executable.

Values are the float32 master weights by default (`dtype="float32"`), the
precision the outer optimizer keeps; `dtype="native"` gives each tensor its
clients' dtype back (a bfloat16 parameter as bfloat16), and a float dtype
casts every float tensor to it. Integer buffers (`num_batches_tracked`)
stay integers, rounded. Federated buffers (BatchNorm statistics) are in the
file, and every alias of a tied weight is written under its own name, so
the file loads with `model.load_state_dict(..., strict=True)` into a fresh
model when every tensor was federated. Tensors a client kept to itself
(`ClientConfig.local_modules`, frozen parameters under the default
`federate="trainable"`) were never sent, so they are not in the file: load
with `strict=False` then, or take `DiLoCoClient.global_state_dict()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import torch

from fedgrpc.coordinator.ops.checkpoint_file import (
    CheckpointFile,
    checkpoint_name,
    list_rounds,
    read_checkpoint,
)
from fedgrpc.domain.model_spec import DType, spec_from_rows
from fedgrpc.errors import CheckpointError, InvalidUpdateError
from fedgrpc.log import get_logger
from fedgrpc.wire.tensors import torch_dtype

log = get_logger(__name__)
ExportFormat = Literal["torch", "safetensors"]
ExportDType = Literal["float32", "native", "bfloat16", "float16", "float64"]
EXPORT_DTYPES: tuple[ExportDType, ...] = (
    "float32", "native", "bfloat16", "float16", "float64",
)  # fmt: skip
_SAFETENSORS_DTYPES = {
    DType.FLOAT32: "F32",
    DType.FLOAT16: "F16",
    DType.BFLOAT16: "BF16",
    DType.FLOAT64: "F64",
    DType.INT64: "I64",
    DType.INT32: "I32",
}
_SAFETENSORS_BY_TORCH = {torch_dtype(d): tag for d, tag in _SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True, slots=True)
class ExportedModel:
    """What `export_model` wrote."""

    path: Path
    checkpoint: Path
    round_id: int
    model_version: int
    num_tensors: int
    num_bytes: int


def newest_checkpoint(path: str | Path) -> CheckpointFile:
    """`path` itself, or the newest intact checkpoint in the directory `path`.

    Raises:
        CheckpointError: nothing readable there.
    """
    path = Path(path)
    if not path.is_dir():
        return read_checkpoint(path)
    for round_id in reversed(list_rounds(path)):
        candidate = path / checkpoint_name(round_id)
        try:
            return read_checkpoint(candidate)
        except CheckpointError as exc:
            log.warning("checkpoint_skipped", path=str(candidate), reason=str(exc))
    raise CheckpointError(f"no intact round-<N>.ckpt checkpoint in {path}")


def state_dict(
    checkpoint: CheckpointFile, dtype: ExportDType = "float32"
) -> dict[str, torch.Tensor]:
    """The checkpoint's global weights by name, aliases included (see module doc).

    Raises:
        CheckpointError: the checkpoint's spec is malformed, or `dtype` unknown.
    """
    if dtype not in EXPORT_DTYPES:
        raise CheckpointError(
            f"dtype={dtype!r} is invalid: expected one of {', '.join(EXPORT_DTYPES)}"
        )
    try:
        spec = spec_from_rows(
            checkpoint.state["spec"], checkpoint.state.get("spec_aliases")
        )
    except (KeyError, TypeError, ValueError, InvalidUpdateError) as exc:
        raise CheckpointError(f"{checkpoint.path}: bad model spec ({exc})") from exc
    master = checkpoint.tensors["master"]
    if master.numel() != spec.num_coordinates:
        start, stop = checkpoint.state.get("master_range", (0, master.numel()))
        raise CheckpointError(
            f"{checkpoint.path} is a parameter shard's checkpoint: it holds only "
            f"coordinates {start}..{stop} of the model's {spec.num_coordinates} "
            "(each shard checkpoints its own range); export from an unsharded "
            "run's checkpoint"
        )
    out = {}
    for slot in spec.slots:
        values = master[slot.coord_offset : slot.coord_offset + slot.spec.numel]
        # clone: each tensor its own storage, so torch.save writes just it
        cast = _cast(values, slot.spec.dtype, dtype).clone()
        out[slot.spec.name] = cast.view(slot.spec.shape)
    for alias, target in spec.aliases:
        out[alias] = out[target]  # one tensor under both names: torch.save shares it
    return out


def _cast(values: torch.Tensor, native: DType, wanted: ExportDType) -> torch.Tensor:
    """Master float32 `values` in the export's dtype for a tensor held as `native`."""
    if not native.is_float:  # an averaged integer counter
        return values.round().to(torch_dtype(native))
    if wanted == "native":
        return values.to(torch_dtype(native))
    return values.to(getattr(torch, wanted))


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    fmt: ExportFormat = "torch",
    dtype: ExportDType = "float32",
) -> ExportedModel:
    """Write the newest model in `checkpoint` (file or directory) to `out`.

    Raises:
        CheckpointError: no readable checkpoint, `out` cannot be written, or
            `dtype` is unknown.
    """
    source = newest_checkpoint(checkpoint)
    tensors = state_dict(source, dtype)
    metadata = {
        "format": "pt",
        "fedgrpc_run_id": str(source.state["run_id"]),
        "fedgrpc_round": str(source.round_id),
        "fedgrpc_model_version": str(source.state["model_version"]),
    }
    if fmt == "safetensors":
        _write_atomically(Path(out), lambda f: _write_safetensors(f, tensors, metadata))
    else:
        _write_atomically(Path(out), lambda f: torch.save(tensors, f))
    return ExportedModel(
        path=Path(out),
        checkpoint=source.path,
        round_id=source.round_id,
        model_version=int(source.state["model_version"]),
        num_tensors=len(tensors),
        num_bytes=sum(
            t.numel() * t.element_size()
            for t in {id(t): t for t in tensors.values()}.values()
        ),
    )


def _write_safetensors(
    out: IO[bytes],
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
) -> None:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _SAFETENSORS_BY_TORCH[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    out.write(struct.pack("<Q", len(encoded)) + encoded)
    for tensor in tensors.values():
        out.write(tensor.reshape(-1).view(torch.uint8).numpy().data)


def _write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write via a temp file and rename: `path` is complete or absent."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "wb", dir=path.parent, prefix=f".{path.name}.", delete=False
        ) as tmp:
            try:
                write(tmp)
                tmp.flush()
                os.fsync(tmp.fileno())
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp.name)
                raise
        os.replace(tmp.name, path)
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc}") from exc
