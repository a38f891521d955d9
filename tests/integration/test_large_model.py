"""A model far larger than any gRPC message limit streams both ways in chunks."""

from __future__ import annotations

import torch

import fedgrpc
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread

GRPC_DEFAULT_MAX_MESSAGE = 4 << 20


def test_model_larger_than_max_message_round_trips() -> None:
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
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


async def test_early_refusal_of_a_large_push_reports_the_real_status() -> None:
    """The coordinator refuses after the header while 40 MB are still being sent."""
    import pytest

    from fedgrpc.client.connection.channel import Credentials, open_channel
    from fedgrpc.client.connection.push import (
        Signing,
        UpdateMeta,
        push_method,
        push_update,
    )
    from fedgrpc.wire.codec_params import DENSE_FP32_BINDING
    from tests.helpers.raw import join, stub

    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=1,
    )
    spec_model = torch.nn.Linear(1000, 10_000)  # 10M params: 40 MB
    flat = torch.zeros(sum(p.numel() for p in spec_model.parameters()))
    with serve_in_thread(config) as coordinator:
        from fedgrpc.wire.tensors import spec_from_module

        channel, service = stub(coordinator.address)
        with channel:
            joined = join(service, spec_from_module(spec_model))
        credentials = Credentials(joined.client_id, joined.session_token)
        signing = Signing(joined.key, joined.run_id, DENSE_FP32_BINDING)
        aio_channel = open_channel(coordinator.address)
        async with aio_channel:
            push = push_method(aio_channel)
            for _ in range(3):  # the race it guards against is timing-dependent
                meta = UpdateMeta(round_id=7, base_version=0, kind="pseudo_gradient")
                with pytest.raises(fedgrpc.WrongRoundError, match="phase"):
                    await push_update(
                        push,
                        credentials,
                        meta,
                        flat,
                        1 << 20,
                        30.0,
                        signing,
                    )
