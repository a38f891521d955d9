"""Reading `--init-model`: a safetensors file or a fedgrpc checkpoint.

Either holds the federation's initial weights by parameter name. A
safetensors file is what `safetensors.torch.save_file(dict(
model.named_parameters()), path)` or `fedgrpc export --format safetensors`
writes; a checkpoint (a `round-<N>.ckpt` file, or a checkpoint directory for
its newest) lends only its weights: the run is new (fresh outer-optimizer
state, round 1). Resuming a run is `checkpoint_dir`'s job.

Every problem is a `ConfigError` naming `init_model` and the path, raised
before the coordinator binds its port.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.ops.model_export import newest_checkpoint, state_dict
from fedgrpc.coordinator.rounds.global_model import GlobalModel
from fedgrpc.coordinator.rounds.initial_model import InitialModel
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
                 tensors=len(model.initial.tensors))  # fmt: skip
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
    """The weights in `path`; see the module docstring.

    Raises:
        ConfigError: missing or unreadable, neither safetensors nor a
            checkpoint, a non-float tensor, no tensors or no elements.
    """
    where = f"init_model={path!r}"
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"{where}: no such file or directory")
    if file.is_dir() or not _looks_like_safetensors(file):
        tensors = _from_checkpoint(file, where)
    else:
        tensors = _from_safetensors(file, where)
    return _checked(tensors, path, where)


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


def _from_safetensors(file: Path, where: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(file))
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: not a readable safetensors file: {exc}") from exc


def _from_checkpoint(file: Path, where: str) -> dict[str, torch.Tensor]:
    try:
        return state_dict(newest_checkpoint(file), dtype="native")
    except CheckpointError as exc:
        raise ConfigError(
            f"{where} is neither a safetensors file nor a fedgrpc checkpoint "
            f"({exc}); pass model.safetensors (safetensors.torch.save_file("
            "dict(model.named_parameters()), path)) or a round-<N>.ckpt"
        ) from exc


def _checked(tensors: dict[str, torch.Tensor], path: str, where: str) -> InitialModel:
    if not tensors:
        raise ConfigError(f"{where} holds no tensors")
    dtypes: dict[str, DType] = {}
    for name, tensor in tensors.items():
        dtype = _BY_TORCH.get(tensor.dtype)
        if dtype is None:
            kind = str(tensor.dtype).removeprefix("torch.")
            raise ConfigError(
                f"{where}: tensor {name!r} is {kind}; only float16, bfloat16, "
                "float32 and float64 tensors and int64/int32 buffers (such as "
                "num_batches_tracked) are federated: save model.state_dict() "
                "without the others"
            )
        if dtype.is_float and not bool(torch.isfinite(tensor).all()):
            raise ConfigError(f"{where}: tensor {name!r} has NaN or infinite values")
        dtypes[name] = dtype
    try:
        spec = ModelSpec(
            tuple(TensorSpec(n, tuple(t.shape), dtypes[n]) for n, t in tensors.items())
        )
    except InvalidUpdateError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if spec.num_coordinates == 0:
        raise ConfigError(f"{where}: its tensors have no elements")
    return InitialModel(path, tensors, dtypes)
