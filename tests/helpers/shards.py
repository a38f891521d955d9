"""Shared pieces of the parameter-sharding tests: N in-process shard coordinators.

Shards must know every peer's address before they start (the leader's, to
vote; all of them, for Join's map), so the helper reserves free loopback
ports first: the kernel hands out a free port for a socket bound to port 0,
which is closed again before the coordinator binds it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from tests.helpers.scripted import FAST
from tests.helpers.tree import Member, base_config

IN, OUT = 30, 30
SIZE = IN * OUT + OUT
"""930 parameters: with chunk_bytes 1024 (256-coordinate blocks), two shards
of 256 and 674 coordinates (unequal: a misplaced range shows)."""
TOKEN = "s" * 40
PATIENT = ClientConfig(
    rpc_timeout_s=10, round_wait_s=30, connect_timeout_s=20,
    reconnect_initial_s=0.1, reconnect_max_s=1.0, reconnect_give_up_s=120,
)  # fmt: skip
"""A lost shard makes `step()` return "offline" after ~1 s of retrying; the
client keeps training and tries again at its next sync point."""


def free_port() -> int:
    """A loopback port nobody listens on (bind to 0, read it, close)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def token_file(tmp_path: Path) -> Path:
    """The shards' shared secret, readable by its owner only."""
    path = tmp_path / "shard.token"
    path.write_text(TOKEN + "\n")
    os.chmod(path, 0o600)
    return path


def init_file(tmp_path: Path) -> Path:
    """Every shard's `init_model`: the same initial weights."""
    torch.manual_seed(7)
    path = tmp_path / "init.safetensors"
    model = nn.Linear(IN, OUT)
    save_file({n: p.detach() for n, p in model.named_parameters()}, str(path))
    return path


def shard_configs(
    tmp_path: Path, count: int, peers: Sequence[str] | None = None, **overrides: Any
) -> list[CoordinatorConfig]:
    """One config per shard on reserved ports (or `peers`), same init and token."""
    addresses = list(peers or [f"127.0.0.1:{free_port()}" for _ in range(count)])
    settings: dict[str, Any] = {
        "init_model": str(init_file(tmp_path)),
        "min_clients": 2,
        "shard_peers": addresses,
        "shard_token_file": str(token_file(tmp_path)),
        "shard_commit_timeout_s": 3.0,
        **overrides,
    }
    return [
        base_config(listen=addresses[k], shard=f"{k}/{count}", **settings)
        for k in range(count)
    ]


@contextlib.contextmanager
def running_shards(
    configs: Sequence[CoordinatorConfig],
) -> Iterator[list[CoordinatorThread]]:
    """Start every shard (the leader first); stop them in reverse."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve_in_thread(c)) for c in configs]


def join(
    address: str, samples: Sequence[int], seed: int, config: ClientConfig = FAST
) -> list[Member]:
    """One client per entry of `samples` (the model of this module's size)."""
    members: list[Member] = []
    for index, count in enumerate(samples):
        torch.manual_seed(seed + index)
        model = nn.Linear(IN, OUT)
        members.append((DiLoCoClient(address, model, config=config), model, count))
    return members


def scripted(rounds: int, clients: int, seed: int) -> list[list[torch.Tensor]]:
    """steps[c][r]: what client c moves its weights by before round r's sync."""
    generator = torch.Generator().manual_seed(seed)
    return [
        [0.05 * torch.randn(SIZE, generator=generator) for _ in range(rounds)]
        for _ in range(clients)
    ]


def assembled(shards: Sequence[CoordinatorThread]) -> torch.Tensor:
    """The federation's weights: each shard's master copy, which is its own range."""
    parts = []
    for shard in shards:
        model = shard.running.runtime.engine.model
        master, held = model.require_master(), model.require_held()
        assert (
            master.numel()
            == held.num_coordinates
            < model.require_spec().num_coordinates
        )
        parts.append(master.clone())
    return torch.cat(parts)
