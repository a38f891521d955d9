"""Reading `--init-model`: a safetensors file or a fedgrpc checkpoint.

Either holds the federation's initial weights by parameter name. A
safetensors file is what `safetensors.torch.save_file(dict(
model.named_parameters()), path)` or `fedgrpc export --format safetensors`
writes; a checkpoint (a `round-<N>.ckpt` file, or a checkpoint directory for
its newest) lends only its weights: the run is new (fresh outer-optimizer
state, round 1). Resuming a run is `checkpoint_dir`'s job.

Every problem is a `ConfigError` naming `init_model` and the path, raised
before the coordinator binds its port: the whole file is checked at start,
one piece at a time, and its weights are read again, and only the range
this coordinator holds, at the first Join (`rounds.initial_model`). So a
parameter shard never holds the whole model: a safetensors file is read a
piece of a tensor at a time (each through its own memory map, closed after
the piece, so the file's pages leave the process with it); a checkpoint's
body is checked whole by its SHA-256, so it is loaded, sliced and dropped.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.ops.checkpoint_file import CheckpointFile
from fedgrpc.coordinator.ops.model_export import newest_checkpoint, state_dict
from fedgrpc.coordinator.rounds.global_model import GlobalModel
from fedgrpc.coordinator.rounds.initial_model import (
    PIECE_ELEMENTS,
    InitialModel,
    TensorPart,
)
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.errors import CheckpointError, ConfigError, InvalidUpdateError
from fedgrpc.log import get_logger
from fedgrpc.wire.tensors import torch_dtype

log = get_logger(__name__)

_BY_TORCH = {torch_dtype(d): d for d in DType}
_HEADER_LIMIT = 100 << 20
"""safetensors' own cap on the JSON header (100 MB)."""


def choose_initial_model(config: CoordinatorConfig, model: GlobalModel) -> None:
    """Where version 0 comes from: the checkpoint, `init_model`, or a client.

    Called after a checkpoint was restored (or none was found); loads
    `init_model` into `model.initial` when the run starts afresh.

    Raises:
        ConfigError: none of the three was given, or `init_model` is
            unusable.
    """
    if model.master is not None:  # resumed: the checkpoint's weights win
        if config.init_model:
            log.warning("init_model_ignored", init_model=config.init_model,
                        reason="resuming the run in checkpoint_dir")  # fmt: skip
        return
    if config.init_model:
        model.initial = load_init_model(config.init_model)
        log.info("init_model_loaded", init_model=config.init_model,
                 parameters=model.initial.spec.num_coordinates,
                 tensors=len(model.initial.shapes))  # fmt: skip
    elif config.upstream:  # a leaf: version 0 is the root's (`rounds.upstream`)
        return
    elif not config.seed_from_first_client:
        raise ConfigError(
            "no initial model: pass --init-model model.safetensors (TOML "
            "init_model; a fedgrpc checkpoint works too), or "
            "--seed-from-first-client (seed_from_first_client = true) to let "
            "the first client to join upload its weights, or a checkpoint_dir "
            "holding a run to resume"
        )


def load_init_model(path: str) -> InitialModel:
    """The weights in `path`, checked, to be read on demand; see the module docstring.

    Raises:
        ConfigError: missing or unreadable, neither safetensors nor a
            checkpoint, a non-float tensor, no tensors or no elements.
    """
    where = f"init_model={path!r}"
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"{where}: no such file or directory")
    if file.is_dir() or not _looks_like_safetensors(file):
        checkpoint = _checkpoint_of(file, where)
        tensors = _from_checkpoint(checkpoint, where)
        shapes = {n: tuple(t.shape) for n, t in tensors.items()}
        kinds = {n: t.dtype for n, t in tensors.items()}
        dtypes = _checked(shapes, kinds, where)
        for name, tensor in tensors.items():
            _check_finite(name, tensor, dtypes[name], where)
        del tensors  # read again, only the held range, at the first Join
        return InitialModel(path, shapes, dtypes, CheckpointSource(checkpoint, where))
    source = SafetensorsSource(file, where)
    shapes, kinds = source.describe()
    dtypes = _checked(shapes, kinds, where)
    pieces = _pieces([n for n in shapes if dtypes[n].is_float], shapes)
    for (name, _, _), values in zip(pieces, source.read(pieces), strict=True):
        _check_finite(name, values, dtypes[name], where)
    return InitialModel(path, shapes, dtypes, source)


def _pieces(
    names: Sequence[str], shapes: dict[str, tuple[int, ...]]
) -> list[TensorPart]:
    """Every element of `names`, in parts of at most `PIECE_ELEMENTS`."""
    return [
        (name, lo, min(math.prod(shapes[name]), lo + PIECE_ELEMENTS))
        for name in names
        for lo in range(0, math.prod(shapes[name]), PIECE_ELEMENTS)
    ]


class SafetensorsSource:
    """Pieces of a safetensors file's tensors, each read through its own mapping.

    safetensors memory-maps the file and hands out tensors over the mapped
    pages, which count in the process's RSS while mapped: one mapping per
    piece keeps what reading adds to the peak at one piece.
    """

    def __init__(self, file: Path, where: str) -> None:
        self.file, self.where = file, where

    def describe(self) -> tuple[dict[str, tuple[int, ...]], dict[str, torch.dtype]]:
        """Each tensor's shape and dtype, in the file's order (reads no weights)."""
        shapes: dict[str, tuple[int, ...]] = {}
        kinds: dict[str, torch.dtype] = {}
        with self._open() as handle:
            for name in handle.keys():  # noqa: SIM118 (a safetensors handle)
                piece = handle.get_slice(name)
                shapes[name] = tuple(piece.get_shape())
                probe = piece[0:0] if shapes[name] else handle.get_tensor(name)
                kinds[name] = probe.dtype
        return shapes, kinds

    def read(self, parts: Sequence[TensorPart]) -> Iterator[torch.Tensor]:
        """Each part's flat elements (only the rows that hold them are read)."""
        for name, lo, hi in parts:
            with self._open() as handle:
                yield _flat_piece(handle, name, lo, hi)

    @contextlib.contextmanager
    def _open(self) -> Iterator[Any]:
        """The file's handle; a broken file (header or data) is a `ConfigError`."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.file), "pt") as handle:
                yield handle
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"{self.where}: not a readable safetensors file: {exc}"
            ) from exc


def _flat_piece(handle: Any, name: str, lo: int, hi: int) -> torch.Tensor:
    """Flat elements lo..hi of tensor `name`: the rows holding them, sliced."""
    piece = handle.get_slice(name)
    shape = piece.get_shape()
    if not shape:
        return handle.get_tensor(name).reshape(-1)[lo:hi]  # type: ignore[no-any-return]
    row = math.prod(tuple(shape[1:]))
    first, stop = lo // row, -(-hi // row)
    rows: torch.Tensor = piece[first:stop]
    return rows.reshape(-1)[lo - first * row : hi - first * row]


class CheckpointSource:
    """A checkpoint's weights: its body's SHA-256 covers it whole, so read whole."""

    def __init__(self, file: CheckpointFile, where: str) -> None:
        self.path, self.where = file.path, where

    def read(self, parts: Sequence[TensorPart]) -> Iterator[torch.Tensor]:
        """Each part's flat elements; the rest of the checkpoint goes at the end."""
        tensors = _from_checkpoint(_checkpoint_of(self.path, self.where), self.where)
        for name, lo, hi in parts:
            yield tensors[name].reshape(-1)[lo:hi]


def _looks_like_safetensors(file: Path) -> bool:
    """8-byte little-endian header length, then a JSON object: safetensors."""
    try:
        with file.open("rb") as src:
            head = src.read(8)
            if len(head) < 8:
                return False
            (length,) = struct.unpack("<Q", head)
            if not 2 <= length <= _HEADER_LIMIT:
                return False
            header = json.loads(src.read(length))
    except (OSError, ValueError):
        return False
    return isinstance(header, dict)


def _checkpoint_of(file: Path, where: str) -> CheckpointFile:
    try:
        return newest_checkpoint(file)
    except CheckpointError as exc:
        raise ConfigError(
            f"{where} is neither a safetensors file nor a fedgrpc checkpoint "
            f"({exc}); pass model.safetensors (safetensors.torch.save_file("
            "dict(model.named_parameters()), path)) or a round-<N>.ckpt"
        ) from exc


def _from_checkpoint(checkpoint: CheckpointFile, where: str) -> dict[str, torch.Tensor]:
    try:
        return state_dict(checkpoint, dtype="native")
    except CheckpointError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _checked(
    shapes: dict[str, tuple[int, ...]], kinds: dict[str, torch.dtype], where: str
) -> dict[str, DType]:
    """Each tensor's federation dtype; the tensors must make a usable model."""
    if not shapes:
        raise ConfigError(f"{where} holds no tensors")
    dtypes: dict[str, DType] = {}
    for name, kind in kinds.items():
        dtype = _BY_TORCH.get(kind)
        if dtype is None:
            shown = str(kind).removeprefix("torch.")
            raise ConfigError(
                f"{where}: tensor {name!r} is {shown}; only float16, bfloat16, "
                "float32 and float64 tensors and int64/int32 buffers (such as "
                "num_batches_tracked) are federated: save model.state_dict() "
                "without the others"
            )
        dtypes[name] = dtype
    try:
        spec = ModelSpec(tuple(TensorSpec(n, s, dtypes[n]) for n, s in shapes.items()))
    except InvalidUpdateError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if spec.num_coordinates == 0:
        raise ConfigError(f"{where}: its tensors have no elements")
    return dtypes


def _check_finite(name: str, values: torch.Tensor, dtype: DType, where: str) -> None:
    if dtype.is_float and not bool(torch.isfinite(values).all()):
        raise ConfigError(f"{where}: tensor {name!r} has NaN or infinite values")
