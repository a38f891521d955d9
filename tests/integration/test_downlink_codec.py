"""Compressed downlink end to end: real coordinator, real DiLoCo clients, gRPC.

With `downlink_codec` the coordinator sends each version's compressed step
instead of the weights; its own error feedback makes the master exactly what
clients rebuild, which the signed digest (BLAKE3, as Join negotiated with
these clients; SHA-256 for a raw client that offered none) checks on every
pull.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import blake3
import pytest
import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.client.connection.pull import ModelReceiver
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.errors import ConfigError
from fedgrpc.wire.tensors import spec_from_module
from tests.helpers.raw import PB, join, stub
from tests.helpers.scripted import FAST

ROUNDS = 4
H = 2


def _model(seed: int = 7) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 16))


def _config(downlink: str, clients: int = 2) -> CoordinatorConfig:
    return CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, min_clients=clients,
        inner_steps=H, round_timeout_s=20.0, seed_from_first_client=True,
        max_rounds=ROUNDS, downlink_codec=downlink,
    )  # fmt: skip


@dataclass
class Trained:
    """One client after the run, and the weights it held at each version."""

    client: DiLoCoClient
    held: dict[int, bytes] = field(default_factory=dict)
    """Version -> the pulled bytes (downlink buffer) right after loading it."""
    signed: dict[int, bytes] = field(default_factory=dict)
    """Version -> the BLAKE3 digest the coordinator signed (the client's base)."""


def _train(coordinator: CoordinatorThread, seed: int, out: dict[int, Trained]) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    client = DiLoCoClient(coordinator.address, model, config=FAST)
    trained = Trained(client)

    def record() -> None:
        version = client.model_version
        trained.held[version] = client._local.downlink.numpy().tobytes()
        trained.signed[version] = client._sync.base_sha256

    record()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(ROUNDS * H + H):
        if client.finished:
            break
        x = torch.randn(16, 64, generator=generator) + seed
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if client.step(loss.item(), num_samples=16):
            record()
    out[seed] = trained


def _run_two(coordinator: CoordinatorThread) -> dict[int, Trained]:
    out: dict[int, Trained] = {}
    threads = [
        threading.Thread(target=_train, args=(coordinator, seed, out))
        for seed in (0, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert set(out) == {0, 1}, "a client thread failed (see its traceback)"
    return out


@pytest.fixture(scope="module")
def topk_run() -> Iterator[tuple[dict[int, Trained], CoordinatorThread]]:
    with serve_in_thread(_config("topk:0.05:int8")) as coordinator:
        out = _run_two(coordinator)
        yield out, coordinator
        for trained in out.values():
            trained.client.close()


def test_clients_stay_bit_identical_to_the_master_every_round(topk_run: Any) -> None:
    out, coordinator = topk_run
    model = coordinator.running.runtime.engine.model
    published = model.published
    assert published.version == ROUNDS
    assert model.downlink is not None
    assert model.downlink.residual_norm > 0  # something was held back
    for version in range(ROUNDS + 1):
        a, b = out[0].held[version], out[1].held[version]
        assert a == b, f"the clients hold different weights at version {version}"
        assert blake3.blake3(a).digest() == out[0].signed[version]
    assert out[0].held[ROUNDS] == published.data.numpy().tobytes()
    assert out[0].signed[ROUNDS] == published.digests.get("blake3")
    master = published.data.view(torch.float32)
    for trained in out.values():
        state = trained.client.global_state_dict()
        flat = torch.cat(
            [state[name].flatten() for name, _ in _model().named_parameters()]
        )
        assert torch.equal(flat, master)


def test_compressed_pulls_move_far_fewer_bytes_than_the_model(topk_run: Any) -> None:
    out, coordinator = topk_run
    spec = spec_from_module(_model())
    dense = ROUNDS * spec.num_bytes
    for trained in out.values():
        # One whole pull of version 0, then ROUNDS compressed steps.
        steps = trained.client.bytes_received - spec.num_bytes
        assert 0 < steps < dense / 8, (steps, dense)
    sent = coordinator.status().bytes_sent
    assert sent == sum(t.client.bytes_received for t in out.values())


def _pull(address: str, **fields: Any) -> tuple[PB.ModelHeader, list[Any]]:
    channel, service = stub(address)
    try:
        joined = join(service, spec_from_module(_model()))
        request = PB.PullModelRequest(
            client_id=joined.client_id, session_token=joined.session_token, **fields
        )
        messages = list(service.PullModel(request, timeout=10))
    finally:
        channel.close()
    return messages[0].header, messages[1:]


def test_a_client_several_versions_behind_gets_the_chain_of_steps(
    topk_run: Any,
) -> None:
    out, coordinator = topk_run
    header, parts = _pull(coordinator.address, held_version=1)
    assert header.HasField("delta_from_version")
    assert header.delta_from_version == 1
    assert header.delta_codec == "topk:0.05:int8"
    assert {p.delta.version for p in parts} == set(range(2, ROUNDS + 1))
    spec = spec_from_module(_model())
    buffer = torch.frombuffer(bytearray(out[0].held[1]), dtype=torch.uint8)
    receiver = ModelReceiver(spec, buffer, held_version=1)
    receiver.accept(PB.PullModelResponse(header=header))
    for part in parts:
        receiver.accept(part)
    pulled = receiver.finish()
    assert pulled.delta_from == 1
    assert pulled.version == ROUNDS
    assert buffer.numpy().tobytes() == out[0].held[ROUNDS]


@pytest.mark.parametrize("fields", [{"held_version": 999}, {}])
def test_an_unknown_or_unnamed_held_version_gets_the_whole_model(
    topk_run: Any, fields: dict[str, int]
) -> None:
    out, coordinator = topk_run
    header, parts = _pull(coordinator.address, **fields)
    assert not header.HasField("delta_from_version")
    data = b"".join(p.chunk.data for p in parts)
    assert data == out[0].held[ROUNDS]


def test_held_weights_that_are_not_the_version_named_fall_back_to_a_whole_pull(
    topk_run: Any,
) -> None:
    out, _ = topk_run
    trained = out[0]
    local, sync = trained.client._local, trained.client._sync
    before = sync.bytes_received
    # The buffer holds the final version; claim the one before: the step
    # applied on top cannot give the signed digest.
    local.downlink_version = ROUNDS - 1
    sync.pull_and_load(ROUNDS, wait_s=10)
    assert local.downlink.numpy().tobytes() == out[1].held[ROUNDS]
    assert local.downlink_version == ROUNDS
    assert sync.bytes_received - before == local.spec.num_bytes  # the whole model


def test_a_model_that_is_not_all_float32_pulls_whole_models() -> None:
    config = _config("topk:0.05:int8", clients=1)
    model = _model().to(torch.bfloat16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with (
        serve_in_thread(config) as coordinator,
        DiLoCoClient(coordinator.address, model, config=FAST) as client,
    ):
        assert coordinator.running.runtime.engine.model.downlink is None
        for _ in range(2 * H):
            loss = model(torch.randn(4, 64, dtype=torch.bfloat16)).float().pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            client.step(loss.item(), num_samples=4)
        assert client.model_version == 2
        num_bytes = client._local.spec.num_bytes
        assert client.bytes_received == 3 * num_bytes  # versions 0, 1, 2 whole
        state = client.global_state_dict()
        published = coordinator.running.runtime.engine.model.published
        assert published is not None
        assert blake3.blake3(published.data.numpy().tobytes()).digest() == (
            client._sync.base_sha256
        )
        assert state["0.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (
            {"downlink_codec": "topk:2"},
            r"downlink_codec='topk:2' is invalid: density=2.0 is invalid",
        ),
        (
            {"downlink_codec": "gzip"},
            r"downlink_codec='gzip' is invalid: codec spec 'gzip' is invalid",
        ),
        (
            {"downlink_codec": "topk:0.01", "round_mode": "streaming"},
            "downlink_codec='topk:0.01' is invalid: expected dense with round_mode",
        ),
    ],
)
def test_a_downlink_codec_that_cannot_work_is_refused(
    settings: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        CoordinatorConfig(**settings)


def test_dense_downlink_keeps_whole_pulls() -> None:
    assert CoordinatorConfig().downlink_codec_config is None
    assert CoordinatorConfig(downlink_codec="dense:fp32").downlink_codec_config is None
    bf16 = CoordinatorConfig(downlink_codec="dense:bf16").downlink_codec_config
    assert bf16 is not None


def test_a_client_behind_the_kept_steps_gets_the_whole_model() -> None:
    # dense:bf16 steps are half the model each: two are kept, not three.
    config = _config("dense:bf16", clients=1)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with (
        serve_in_thread(config) as coordinator,
        DiLoCoClient(coordinator.address, model, config=FAST) as client,
    ):
        while not client.finished:
            loss = model(torch.randn(8, 64)).pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            client.step(loss.item(), num_samples=8)
        assert client.model_version == ROUNDS
        final = client._local.downlink.numpy().tobytes()
        header, parts = _pull(coordinator.address, held_version=ROUNDS - 2)
        assert header.delta_from_version == ROUNDS - 2
        assert {p.delta.version for p in parts} == {ROUNDS - 1, ROUNDS}
        header, parts = _pull(coordinator.address, held_version=ROUNDS - 3)
        assert not header.HasField("delta_from_version")
        assert b"".join(p.chunk.data for p in parts) == final
