"""A model far larger than any gRPC message limit streams both ways in chunks."""

from __future__ import annotations

import torch

import fedgrpc
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.server import serve_in_thread

GRPC_DEFAULT_MAX_MESSAGE = 4 << 20


def test_model_larger_than_max_message_round_trips() -> None:
    config = CoordinatorConfig(
        listen="127.0.0.1:0",
        min_clients=1,
        inner_steps=1,
        outer_optimizer="fedavg",  # lr 1: the new global is exactly the local model
    )
    model = torch.nn.Linear(1500, 1500)  # 2.25M params: 9 MB of float32
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert model_bytes > 2 * GRPC_DEFAULT_MAX_MESSAGE
    assert model_bytes > 8 * config.max_message_bytes
    with (
        serve_in_thread(config) as coordinator,
        fedgrpc.DiLoCoClient(coordinator.address, model) as client,
    ):
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param))
        trained = [p.detach().clone() for p in model.parameters()]
        assert client.step() is True  # H=1: push 9 MB, apply, pull 9 MB
        assert client.model_version == 1
        for param, expected in zip(model.parameters(), trained, strict=True):
            torch.testing.assert_close(param.detach(), expected)
        assert client.bytes_sent >= 2 * model_bytes  # seed + one update
        assert client.bytes_received >= 2 * model_bytes  # initial pull + one pull
        status = coordinator.status()
        assert status.bytes_received >= 2 * model_bytes
        assert status.num_parameters == 1500 * 1500 + 1500
