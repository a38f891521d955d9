"""A finished run (max_rounds) as clients see it, on an in-process coordinator.

Real grpc on 127.0.0.1 port 0 and real DiLoCoClients: the client whose
round was the last one ends holding the final weights with `finished`
true; a client that joins afterwards loads those weights, is finished at
once, and its sync points push nothing.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fedgrpc
from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.errors import ConfigError

H = 2


def _config(max_rounds: int) -> CoordinatorConfig:
    return CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, min_clients=1, inner_steps=H,
        round_timeout_s=30.0, chunk_bytes=1024, max_rounds=max_rounds,
        seed_from_first_client=True,  # the first DiLoCoClient brings the weights
    )  # fmt: skip


def _client(address: str, seed: int) -> tuple[DiLoCoClient, nn.Linear]:
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    config = ClientConfig(rpc_timeout_s=10, round_wait_s=60, connect_timeout_s=10)
    return DiLoCoClient(address, model, config=config), model


def _train_one_sync_point(client: DiLoCoClient, model: nn.Linear) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(H):
        loss = model(torch.randn(4, 3)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        client.step(loss, num_samples=4)


def test_last_round_finishes_the_client_and_late_joiners_get_the_final_model() -> None:
    with fedgrpc.Coordinator(_config(max_rounds=1)) as coordinator:
        first, model = _client(coordinator.address, seed=0)
        with first:
            _train_one_sync_point(first, model)
            assert first.last_round_outcome == "applied"
            assert first.finished
            status = coordinator.wait_finished(timeout=60)
            final = [p.detach().clone() for p in model.parameters()]
            _train_one_sync_point(first, model)  # a sync point after the end
            # str(): mypy would keep the earlier "applied" narrowing.
            assert str(first.last_round_outcome) == "finished"
        assert status.phase == "finished"
        assert status.model_version == 1

        late, late_model = _client(coordinator.address, seed=1)
        with late:
            assert late.finished
            assert late.model_version == 1
            for mine, theirs in zip(late_model.parameters(), final, strict=True):
                assert torch.equal(mine.detach(), theirs)
            sent = late.bytes_sent
            _train_one_sync_point(late, late_model)
            assert late.last_round_outcome == "finished"
            assert late.bytes_sent == sent  # nothing was pushed
        assert coordinator.status().rounds_closed == 1  # no round opened after


def test_wait_finished_without_max_rounds_is_a_config_error() -> None:
    with (
        fedgrpc.Coordinator(_config(max_rounds=0)) as coordinator,
        pytest.raises(ConfigError, match="max_rounds"),
    ):
        coordinator.wait_finished(timeout=1)
