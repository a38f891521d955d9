"""Shared pieces of the aggregation-tree tests: a root, leaves, scripted clients.

The model is tiny and H = 1, so every `step()` is a sync point whose
pseudo-gradient the test chose (`tests.helpers.scripted`): the same
clients with the same steps and sample counts can then run under a flat
coordinator and under a root with leaves, and the two results compared.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from tests.helpers.scripted import FAST, flat

IN, OUT = 6, 3
SIZE = IN * OUT + OUT
"""21 parameters."""

Member = tuple[DiLoCoClient, nn.Module, int]
"""A joined client, its model, and the samples it claims each round."""


def init_file(tmp_path: Path) -> Path:
    """The run's initial weights (the root's `init_model`)."""
    torch.manual_seed(7)
    path = tmp_path / "init.safetensors"
    model = nn.Linear(IN, OUT)
    save_file({n: p.detach() for n, p in model.named_parameters()}, str(path))
    return path


def base_config(**overrides: Any) -> CoordinatorConfig:
    """Sync rounds, H = 1, sample weighting, no divergence guard (equal runs)."""
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "open_enrollment": True,
        "inner_steps": 1,
        "round_timeout_s": 20.0,
        "weighting": "samples",
        "max_update_norm_growth": 0.0,
        "chunk_bytes": 1024,
    }
    settings.update(overrides)
    return CoordinatorConfig(**settings)


def leaf_config(root: CoordinatorThread, **overrides: Any) -> CoordinatorConfig:
    """A leaf of `root` (no initial model of its own: the root's)."""
    return base_config(upstream=root.address, upstream_timeout_s=5.0, **overrides)


@contextlib.contextmanager
def running_tree(
    init: Path, *leaves: dict[str, Any], **root: Any
) -> Iterator[tuple[CoordinatorThread, list[CoordinatorThread]]]:
    """A root (`init_model`, one client per leaf) and a leaf per settings dict.

    Leaves stop before the root (the exit stack unwinds in reverse).
    """
    root_settings: dict[str, Any] = {"min_clients": len(leaves), **root}
    with contextlib.ExitStack() as stack:
        top = stack.enter_context(
            serve_in_thread(base_config(init_model=str(init), **root_settings))
        )
        below = [
            stack.enter_context(serve_in_thread(leaf_config(top, **settings)))
            for settings in leaves
        ]
        yield top, below


def join(address: str, samples: Sequence[int], seed: int) -> list[Member]:
    """One client per entry of `samples`, joined one after the other."""
    members: list[Member] = []
    for index, count in enumerate(samples):
        torch.manual_seed(seed + index)  # own random weights: the root's replace them
        model = nn.Linear(IN, OUT)
        members.append((DiLoCoClient(address, model, config=FAST), model, count))
    return members


def scripted(
    rounds: int, clients: int, seed: int, scale: float = 0.05
) -> list[list[torch.Tensor]]:
    """steps[c][r]: what client c moves its weights by before round r's sync."""
    generator = torch.Generator().manual_seed(seed)
    return [
        [scale * torch.randn(SIZE, generator=generator) for _ in range(rounds)]
        for _ in range(clients)
    ]


def _move(model: nn.Module, step: torch.Tensor) -> None:
    with torch.no_grad():
        offset = 0
        for param in model.parameters():
            n = param.numel()
            param.sub_(step[offset : offset + n].view(param.shape))
            offset += n


def run_round(members: Sequence[Member], steps: Sequence[torch.Tensor]) -> list[str]:
    """Move each client by its step, then sync them all at once; their outcomes."""

    def sync(index: int) -> str:
        client, model, samples = members[index]
        _move(model, steps[index])
        assert client.step(None, num_samples=samples)
        return str(client.last_round_outcome)

    with ThreadPoolExecutor(len(members)) as pool:
        return list(pool.map(sync, range(len(members))))


def master_of(coordinator: CoordinatorThread) -> torch.Tensor:
    """The coordinator's current weights (a copy)."""
    master = coordinator.running.runtime.engine.model.master
    assert master is not None
    return master.clone()


def version_of(coordinator: CoordinatorThread) -> int:
    return coordinator.running.runtime.engine.model.version


def weights_of(members: Sequence[Member]) -> list[torch.Tensor]:
    return [flat(model) for _, model, _ in members]


def close_all(members: Sequence[Member]) -> None:
    for client, _, _ in members:
        client.close()
