"""`init_model` over real gRPC: the file decides the weights and the model.

A client joins an in-process coordinator started from a safetensors file:
its own random weights are replaced by the file's, and a client whose
model differs is refused at Join with `ModelMismatchError` naming the
tensor, while the coordinator keeps serving.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import fedgrpc
from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.errors import ModelMismatchError

CLIENT = ClientConfig(rpc_timeout_s=10, round_wait_s=30, connect_timeout_s=10)


@pytest.fixture
def init_file(tmp_path: Path) -> tuple[Path, nn.Linear]:
    torch.manual_seed(7)
    model = nn.Linear(5, 3)
    path = tmp_path / "init.safetensors"
    save_file({n: p.detach() for n, p in model.named_parameters()}, str(path))
    return path, model


def test_a_joiner_loads_the_files_weights_and_a_different_model_is_refused(
    init_file: tuple[Path, nn.Linear],
) -> None:
    path, source = init_file
    config = CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, min_clients=1, inner_steps=2,
        init_model=str(path),
    )  # fmt: skip
    with fedgrpc.Coordinator(config) as coordinator:
        with pytest.raises(ModelMismatchError, match="tensor 'weight' is \\[4, 5\\]"):
            DiLoCoClient(coordinator.address, nn.Linear(5, 4), config=CLIENT)

        torch.manual_seed(99)  # different local weights: they must not count
        model = nn.Linear(5, 3)
        with DiLoCoClient(coordinator.address, model, config=CLIENT) as client:
            assert client.model_version == 0
            assert client.bytes_sent == 0  # nothing seeded by the client
            for mine, theirs in zip(
                model.parameters(), source.parameters(), strict=True
            ):
                assert torch.equal(mine.detach(), theirs.detach())
        status = coordinator.status()
    assert status.num_parameters == 5 * 3 + 3
    assert status.round_id == 1  # round 1 opened when the model was laid out
