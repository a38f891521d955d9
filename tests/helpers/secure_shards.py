"""Shared pieces of the secure-sharding tests: a model two dense:int8 shards split.

80 x 60 + 60 = 4,860 parameters; dense:int8 blocks at chunk_bytes 1024 hold
1,020 values, so two shards own 2,040 and 2,820 (unequal: a range of the
wrong size shows). Clients join concurrently, so every shard's first
masked round (set up once no Session opened for SETUP_QUIET_S) takes them all.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig
from tests.helpers.scripted import FAST
from tests.helpers.tree import Member

IN, OUT = 80, 60
SIZE = IN * OUT + OUT
CUT = 2040
"""Shard 0 owns 0..2040, shard 1 2040..4860 (dense:int8 blocks of 1,020)."""
CLIP = 0.5
STEP = CLIP / 127
"""One int8 code step: secagg_clip / qmax."""
SECURE: dict[str, Any] = {
    "secure_aggregation": True,
    "codec": "dense:int8",
    "secagg_clip": CLIP,
    "outer_optimizer": "fedavg",
    "outer_lr": 1.0,
    "outer_momentum": 0.0,
    "weighting": "capped",
}
"""fedavg, lr 1: the applied step is the survivors' plain mean itself."""


def init_model(tmp_path: Path) -> Path:
    torch.manual_seed(7)
    path = tmp_path / "secure-init.safetensors"
    model = nn.Linear(IN, OUT)
    save_file({n: p.detach() for n, p in model.named_parameters()}, str(path))
    return path


def join(
    address: str, count: int, seed: int, config: ClientConfig = FAST
) -> list[Member]:
    """`count` clients joined at once (module docstring)."""

    def make(index: int) -> Member:
        generator = torch.Generator().manual_seed(seed + index)
        model = nn.Linear(IN, OUT)
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(torch.randn(param.shape, generator=generator))
        return DiLoCoClient(address, model, config=config), model, 1

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(make, range(count)))


def scripted(rounds: int, clients: int, seed: int) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        [0.05 * torch.randn(SIZE, generator=generator) for _ in range(rounds)]
        for _ in range(clients)
    ]
