"""A coordinator stops and restarts from its checkpoint: the run simply continues.

Real grpc.aio servers on 127.0.0.1 port 0 and real DiLoCoClients; the
pseudo-gradients are chosen by the test (`tests.helpers.scripted`), so the
coordinator's weights and momentum after the restart are checked against
torch's Nesterov SGD over every applied round, each exactly once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.ops.checkpoint_file import list_rounds
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from tests.helpers.scripted import (
    FAST,
    flat,
    nesterov_reference,
    random_steps,
    scripted_steps,
)


def _config(directory: Path, round_mode: str = "sync") -> CoordinatorConfig:
    return CoordinatorConfig(
        round_mode=round_mode,
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        min_clients=1,
        inner_steps=1,
        chunk_bytes=1024,
        open_enrollment=True,
        checkpoint_dir=str(directory),
        checkpoint_keep=2,
    )


def _momentum(coordinator: CoordinatorThread) -> torch.Tensor:
    state = coordinator.running.runtime.engine.model.optimizer.state_dict()
    buffer = state["momentum_buffer"]
    assert isinstance(buffer, torch.Tensor)
    return buffer.clone()


@pytest.mark.parametrize("round_mode", ["sync", "buffered_async"])
def test_restart_resumes_run_version_weights_and_momentum(
    tmp_path: Path, round_mode: str
) -> None:
    # Arrange: three applied rounds from one client, then a clean stop.
    torch.manual_seed(0)
    model = nn.Linear(30, 10)
    initial = flat(model)
    size = initial.numel()
    with serve_in_thread(_config(tmp_path, round_mode)) as first:
        with DiLoCoClient(first.address, model, inner_steps=1, config=FAST) as client:
            pushed = scripted_steps(client, model, random_steps(3, size, seed=1))
        before = first.status()
        weights_before = flat(model)
        momentum_before = _momentum(first)
    assert list_rounds(tmp_path) == [2, 3]  # keep 2 (the stop rewrote round 3)

    # Act: restart on the same directory; a new client with other weights joins.
    with serve_in_thread(_config(tmp_path, round_mode)) as second:
        resumed, momentum_resumed = second.status(), _momentum(second)
        torch.manual_seed(99)
        newcomer = nn.Linear(30, 10)
        with DiLoCoClient(
            second.address, newcomer, inner_steps=1, config=FAST
        ) as client:
            loaded = flat(newcomer)
            pushed += scripted_steps(client, newcomer, random_steps(2, size, seed=2))
            assert client.model_version == 5
        after = second.status()
        momentum_after = _momentum(second)

    # Assert: same run and round counter; the newcomer pulled version 3, not seeded.
    assert resumed.run_id == before.run_id
    assert (resumed.model_version, resumed.round_id) == (3, 4)
    assert resumed.model_sha256 == before.model_sha256
    assert [c.samples_contributed for c in resumed.clients] == [
        c.samples_contributed for c in before.clients
    ]
    torch.testing.assert_close(loaded, weights_before, rtol=0, atol=0)
    torch.testing.assert_close(momentum_resumed, momentum_before, rtol=0, atol=0)
    # Every applied round exactly once: 3 before the restart, 2 after.
    expected_weights, expected_momentum = nesterov_reference(initial, pushed)
    assert after.model_version == 5
    torch.testing.assert_close(flat(newcomer), expected_weights)
    torch.testing.assert_close(momentum_after, expected_momentum)
    assert [r.round_id for r in after.recent_rounds] == [1, 2, 3, 4, 5]
