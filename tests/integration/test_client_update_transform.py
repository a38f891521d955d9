"""`DiLoCoClient(update_transform=...)` against a real coordinator on 127.0.0.1 port 0.

The hook is how `fedgrpc simulate --attack` builds Byzantine clients: what
it returns must be exactly what the coordinator verifies and averages (the
update is signed after the transform), and a transform that returns
garbage must fail on the client with nothing sent.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.client.transform import UpdateContext
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.errors import InvalidUpdateError

H = 2


@pytest.fixture
def coordinator() -> Iterator[CoordinatorThread]:
    # fedavg at lr 1: the new global is exactly old - mean(updates), and with
    # one client the mean is that client's update.
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=1,
        inner_steps=H,
        round_timeout_s=30.0,
        outer_optimizer="fedavg",
        outer_lr=1.0,
        max_rounds=1,
    )
    with serve_in_thread(config) as running:
        yield running


def _config() -> ClientConfig:
    return ClientConfig(
        name="transformed", rpc_timeout_s=10, round_wait_s=30, connect_timeout_s=10
    )


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_the_coordinator_applies_exactly_what_the_update_transform_returned(
    coordinator: CoordinatorThread,
) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    chosen = torch.linspace(-1.0, 1.0, 15)  # 4 x 3 weights + 3 biases
    seen: list[UpdateContext] = []

    def transform(update: torch.Tensor, context: UpdateContext) -> torch.Tensor:
        seen.append(context)
        return chosen.clone()

    with DiLoCoClient(
        coordinator.address, model, config=_config(), update_transform=transform
    ) as client:
        start = _flat(model).clone()
        for _ in range(H):  # the weights never move locally: u would be 0
            client.step(loss=1.0, num_samples=8)
        assert client.last_round_outcome == "applied"
        status = coordinator.status()
        assert [c.updates_accepted for c in status.clients] == [1]
        torch.testing.assert_close(_flat(model), start - chosen, rtol=0, atol=1e-6)
    assert [(c.round_id, c.num_samples) for c in seen] == [(1, 16)]
    assert seen[0].client_id == client.client_id


def test_a_transform_returning_the_wrong_shape_fails_on_the_client_and_sends_nothing(
    coordinator: CoordinatorThread,
) -> None:
    model = nn.Linear(4, 3)
    with DiLoCoClient(
        coordinator.address,
        model,
        config=_config(),
        update_transform=lambda update, _: update[:5].clone(),
    ) as client:
        client.step(loss=1.0)
        with pytest.raises(InvalidUpdateError, match="update_transform returned"):
            client.step(loss=1.0)
        status = coordinator.status()
        assert [c.updates_accepted for c in status.clients] == [0]
        assert status.model_version == 0
        assert not status.recent_rounds
