"""Shared pieces of the secure-aggregation integration tests.

A coordinator config with secure aggregation on (fedavg, lr 1, so the
applied step is the mean itself), DiLoCoClients joined and synced on
threads, and readers of what each side holds.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.client.secure import SecureUpdates
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.secure.mode import SecureMode
from fedgrpc.coordinator.services.in_thread import CoordinatorThread
from fedgrpc.secagg import ServerPhase
from tests.helpers.eventually import eventually
from tests.helpers.scripted import FAST

IN, OUT = 12, 5
"""65 parameters: small, so several 64-byte chunks per masked push."""


def config(**overrides: object) -> CoordinatorConfig:
    settings: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "open_enrollment": True,
        "secure_aggregation": True,
        "codec": "dense:int8",
        "min_clients": 3,
        "inner_steps": 1,
        "round_timeout_s": 20.0,
        "outer_optimizer": "fedavg",
        "outer_lr": 1.0,
        "outer_momentum": 0.0,
        "chunk_bytes": 1024,
        "secagg_clip": 0.5,
        "max_update_norm_growth": 0.0,
    }
    settings.update(overrides)
    return CoordinatorConfig(seed_from_first_client=True, **settings)  # type: ignore[arg-type]


def secure_mode_of(coordinator: CoordinatorThread) -> SecureMode:
    mode = coordinator.running.runtime.mode
    assert isinstance(mode, SecureMode)
    return mode


def connect(
    address: str, count: int, seed: int = 0
) -> list[tuple[DiLoCoClient, nn.Module]]:
    """`count` clients joined concurrently (each constructor waits for the seed)."""

    def make(index: int) -> tuple[DiLoCoClient, nn.Module]:
        torch.manual_seed(seed + index)
        model = nn.Linear(IN, OUT)
        return DiLoCoClient(address, model, config=FAST), model

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(make, range(count)))


def sync_all(
    clients: list[tuple[DiLoCoClient, nn.Module]], seed: int
) -> list[str | None]:
    """Move each model by a random step, then run one sync point on each, at once."""
    generator = torch.Generator().manual_seed(seed)
    for _, model in clients:
        with torch.no_grad():
            for param in model.parameters():
                param.sub_(0.05 * torch.randn(param.shape, generator=generator))

    def step(pair: tuple[DiLoCoClient, nn.Module]) -> str | None:
        client, _ = pair
        assert client.step(None)
        return client.last_round_outcome

    with ThreadPoolExecutor(len(clients)) as pool:
        return list(pool.map(step, clients))


def codes_of(client: DiLoCoClient) -> np.ndarray:
    """The int8 codes this client masked in its last round (its own data)."""
    updates = client._sync.compressed  # the client's own record
    assert isinstance(updates, SecureUpdates)
    assert updates.last_round is not None
    assert updates.last_round.codes is not None
    return updates.last_round.codes


def close_all(clients: list[tuple[DiLoCoClient, nn.Module]]) -> None:
    for client, _ in clients:
        client.close()


def wait_for_phase(mode: SecureMode, phase: ServerPhase, round_id: int) -> None:
    def reached() -> bool:
        rnd = mode.round
        current = mode.engine.current
        state = (mode.engine.phase, current and current.round_id)
        assert rnd is not None
        assert rnd.round_id == round_id, state
        assert rnd.server.phase is phase, (rnd.received, rnd.members, rnd.dropped)
        return True

    eventually(reached, timeout_s=20)
