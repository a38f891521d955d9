"""Which of a model's tensors travel: the federated set, and what stays home.

A user's model holds more than trainable parameters: frozen ones (a LoRA
base model, a frozen backbone), buffers (BatchNorm's running statistics and
its `num_batches_tracked` counter), tied weights (one Parameter under two
names), and parts a client may want to keep to itself (a personal head).
`select_tensors` turns `ClientConfig(federate=..., buffers=...,
local_modules=...)` into one ordered list, so that:

* frozen parameters never cost a byte (`federate="trainable"`, the default);
* buffers are averaged across clients (`buffers="average"`, the default), so
  a BatchNorm model's global weights come with statistics that match them;
* a tied weight travels once, under its first name, and every other name is
  an alias that exports write back (`ModelSpec.aliases`);
* `local_modules` (name prefixes) never leave the client.

Every client of a federation must choose the same set: the spec digest
covers it, and Join names the first tensor that differs.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from fedgrpc.config.client import ClientConfig
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.errors import ConfigError
from fedgrpc.log import get_logger
from fedgrpc.wire.tensors import federable_dtype, spec_from_tensors

log = get_logger(__name__)

TensorFilter = Callable[[str, torch.Tensor], bool]
"""`federate` as a function: True for each parameter that should travel."""


@dataclass(frozen=True)
class FederatedTensors:
    """The tensors that travel, in spec order, and those kept local."""

    spec: ModelSpec
    tensors: tuple[torch.Tensor, ...]
    """The live tensors (parameters, then buffers), updated in place."""
    parameters: tuple[torch.Tensor, ...]
    """Only the parameters among them (what FedProx anchors)."""
    local: tuple[str, ...]
    """`state_dict` names that stay on this client (frozen, local, skipped)."""
    frozen: tuple[tuple[str, torch.Tensor], ...] = ()
    """Parameters that never travel and must be equal on every client: the
    frozen base (not `local_modules`, which are personal by design)."""

    def frozen_digest(self) -> bytes:
        """SHA-256 over the frozen base (name, dtype, shape, bytes); b"" if none.

        Join sends it, so a client whose frozen base differs from the
        federation's (another base checkpoint, or a differently seeded
        init) is refused instead of training adapters against other
        weights. One hash at Join: ~0.7 s per GB on one core.
        """
        if not self.frozen:
            return b""
        hasher = hashlib.sha256(b"fedgrpc.v1.frozen")
        for name, tensor in self.frozen:
            header = f"{name}|{tensor.dtype}|{list(tensor.shape)}".encode()
            hasher.update(struct.pack("<Q", len(header)) + header)
            # Bytes as they are (bfloat16 has no numpy dtype): a uint8 view.
            raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            hasher.update(struct.pack("<Q", raw.numel()))
            hasher.update(raw.numpy().data)
        return hasher.digest()


def select_tensors(model: torch.nn.Module, config: ClientConfig) -> FederatedTensors:
    """The federated tensors of `model` under `config`'s sharing rules.

    Parameters in `named_parameters()` order, then persistent buffers in
    `named_buffers()` order (non-persistent ones, such as cached attention
    masks, are not model state and never travel).

    Raises:
        ConfigError: nothing would travel, or a parameter is not a float.
    """
    local_prefixes = tuple(_prefix(name) for name in config.local_modules)
    persistent = set(model.state_dict(keep_vars=True))
    chosen: list[tuple[str, torch.Tensor, bool]] = []
    aliases: list[tuple[str, str]] = []
    first_name: dict[int, str] = {}
    travels: set[int] = set()
    frozen: list[tuple[str, torch.Tensor]] = []
    for name, tensor, buffer in _named_state(model):
        if name not in persistent:
            continue
        key = id(tensor)
        if key in first_name:  # a tied alias of a tensor already seen
            if key in travels:
                aliases.append((name, first_name[key]))
            continue
        first_name[key] = name
        if _travels(name, tensor, buffer, config, local_prefixes):
            travels.add(key)
            chosen.append((name, tensor, buffer))
        elif not buffer and not name.startswith(local_prefixes):
            frozen.append((name, tensor))
    _check_local_modules(config.local_modules, persistent)
    if not any(not buffer for _, _, buffer in chosen):
        raise ConfigError(
            "no parameter of the model would travel: with federate='trainable' "
            "(the default) frozen parameters stay local; unfreeze some, pass "
            "federate='all', or check local_modules"
        )
    spec = spec_from_tensors(chosen, tuple(aliases))
    sent = {name for name, _, _ in chosen} | {alias for alias, _ in aliases}
    return FederatedTensors(
        spec=spec,
        tensors=tuple(tensor for _, tensor, _ in chosen),
        parameters=tuple(tensor for _, tensor, buffer in chosen if not buffer),
        local=tuple(name for name in persistent if name not in sent),
        frozen=tuple(frozen),
    )


def _named_state(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """Every parameter and buffer under every name (tied ones repeated)."""
    for name, param in model.named_parameters(remove_duplicate=False):
        yield name, param, False
    for name, buf in model.named_buffers(remove_duplicate=False):
        yield name, buf, True


def _check_local_modules(modules: tuple[str, ...], names: set[str]) -> None:
    """A `local_modules` entry that matches nothing is a typo: say so."""
    for module in modules:
        prefix = _prefix(module)
        if not any(name.startswith(prefix) for name in names):
            raise ConfigError(
                f"local_modules entry {module!r} matches no parameter or buffer of "
                "the model; give a module name as in model.named_modules(), "
                "e.g. 'head'"
            )


def _prefix(module: str) -> str:
    return module.rstrip(".") + "."


def _travels(
    name: str,
    tensor: torch.Tensor,
    buffer: bool,
    config: ClientConfig,
    local_prefixes: tuple[str, ...],
) -> bool:
    if name.startswith(local_prefixes):
        return False
    if buffer:
        if config.buffers == "local":
            return False
        if not federable_dtype(tensor, buffer=True):
            log.warning(
                "buffer_kept_local", buffer=name, dtype=str(tensor.dtype),
                reason="only float, int64 and int32 buffers can be averaged",
            )  # fmt: skip
            return False
        return True
    federate = config.federate
    if callable(federate):
        return bool(federate(name, tensor))
    return federate == "all" or bool(tensor.requires_grad)
