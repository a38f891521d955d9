"""LoRA / PEFT adapters: federate only the adapter, save it in PEFT's format.

A model wrapped by `peft.get_peft_model` has its base weights frozen
(`requires_grad=False`) and only the adapter's trainable. fedgrpc decides
what travels from those flags alone (`ClientConfig.federate = "trainable"`),
so a PEFT model needs nothing special to join: the adapter's coordinates
are all its uplink (rank 8 LoRA on a transformer's attention projections is
about 1 % of the model, `bench/lora.py`). What a user still needs is the
result in the format the rest of their tooling reads, which `save_adapter`
writes: `PeftModel.from_pretrained(base_model, directory)` loads it.

Needs `pip install 'fedgrpc[lora]'` (peft, transformers).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedgrpc.client import DiLoCoClient
from fedgrpc.client.tensors import select_tensors
from fedgrpc.config import ClientConfig
from fedgrpc.errors import ConfigError
from fedgrpc.log import get_logger

try:
    from peft import PeftModel
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "fedgrpc.integrations.peft needs peft: pip install 'fedgrpc[lora]'"
    ) from exc

__all__ = ("adapter_parameters", "save_adapter", "save_init_adapter")

log = get_logger(__name__)


def save_adapter(
    model: torch.nn.Module,
    directory: str | Path,
    *,
    client: DiLoCoClient | None = None,
) -> Path:
    """Write the global adapter as PEFT does (`adapter_config.json` + safetensors).

    With `client`, the adapter written is the federation's latest global one
    (`client.global_state_dict()`), whenever this is called: between sync
    points the model itself holds this client's local progress, which is
    not the federated result. Without it, the adapter the model holds now,
    which is the global one right after a `client.step()` that returned
    True with `last_round_outcome == "applied"`, or once `client.finished`.

    Args:
        model: The `peft.PeftModel` the client federated.
        directory: Created if missing; PEFT's files are (over)written in it.
        client: The `DiLoCoClient` federating `model`, to save its global
            weights rather than the model's current ones.

    Returns:
        The directory, for `PeftModel.from_pretrained(base_model, directory)`.

    Raises:
        ConfigError: `model` is not a `peft.PeftModel`.
    """
    adapted = _peft_model(model, "save_adapter")
    path = Path(directory)
    # PEFT picks the adapter's tensors out of a full state dict (and drops
    # the adapter name from their keys) itself: give it the global one.
    global_weights = None if client is None else client.global_state_dict()
    # safetensors: no pickle, the format PEFT loads by default.
    adapted.save_pretrained(
        str(path), safe_serialization=True, state_dict=global_weights
    )
    trainable, total = adapted.get_nb_trainable_parameters()
    log.info(
        "adapter_saved",
        directory=str(path),
        adapter_params=trainable,
        model_params=total,
        global_version=None if client is None else client.model_version,
    )
    return path


def save_init_adapter(
    model: torch.nn.Module, path: str | Path, *, config: ClientConfig | None = None
) -> Path:
    """Write the tensors `model` federates as the coordinator's `--init-model`.

    So that the coordinator, not the first client to join, decides the
    adapter a LoRA federation starts from (`fedgrpc serve --init-model
    PATH`, without `--seed-from-first-client`): a safetensors file of
    exactly the tensors that travel under `config`'s rules (the adapter,
    under `federate="trainable"`), by the names clients send them under.

    Args:
        model: The `peft.PeftModel` clients will federate (its adapter as
            initialised, or loaded from an earlier run's `save_adapter`).
        path: The safetensors file to write.
        config: The clients' `ClientConfig` (`federate`, `buffers`,
            `local_modules` decide what travels); None: the defaults.

    Raises:
        ConfigError: `model` is not a `peft.PeftModel`, or nothing travels.
    """
    from safetensors.torch import save_file

    _peft_model(model, "save_init_adapter")
    federated = select_tensors(model, config or ClientConfig())
    tensors = {
        spec.name: tensor.detach().cpu().contiguous()
        for spec, tensor in zip(federated.spec.tensors, federated.tensors, strict=True)
    }
    file = Path(path)
    save_file(tensors, str(file))
    log.info("init_adapter_saved", path=str(file), tensors=len(tensors))
    return file


def _peft_model(model: torch.nn.Module, caller: str) -> PeftModel:
    """`model` as a `PeftModel`, or a ConfigError saying how to make one."""
    if not isinstance(model, PeftModel):
        raise ConfigError(
            f"{caller} needs the peft.PeftModel the clients federate, got a "
            f"{type(model).__name__}: wrap the base model with "
            "peft.get_peft_model(model, LoraConfig(...)) before joining"
        )
    return model


def adapter_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable (adapter) parameters by name: exactly what the client federates.

    For logging and checks, e.g. that two clients hold the same global
    adapter after a round. Detached views, not copies.
    """
    return {
        name: param.detach()
        for name, param in model.named_parameters()
        if param.requires_grad
    }
