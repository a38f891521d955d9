"""A streaming run restarts from its checkpoint with every fragment's optimizer state.

Real coordinator and DiLoCoClients; the per-fragment Nesterov state
(`optim.fragmented`) must come back bit for bit, and the run must go on
with the fragment its version names (v mod P), each fragment's optimizer
stepping once per round of its own.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.optim.outer import StateDict
from tests.helpers.scripted import FAST


def _config(directory: Path) -> CoordinatorConfig:
    return CoordinatorConfig(
        round_mode="streaming", fragments=2, inner_steps=2,
        streaming_overlap_steps=0, seed_from_first_client=True,
        listen="127.0.0.1:0", min_clients=1, chunk_bytes=1024,
        open_enrollment=True, checkpoint_dir=str(directory), checkpoint_keep=2,
    )  # fmt: skip


def _state(coordinator: CoordinatorThread) -> StateDict:
    state = coordinator.running.runtime.engine.model.optimizer.state_dict()
    return {
        k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()
    }


def _train(client: DiLoCoClient, model: nn.Module, syncs: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    done = 0
    for _ in range(100 * syncs):  # bounded: syncs come every H/P = 1 step
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=generator))
        if client.step(0.5):
            assert client.last_round_outcome == "applied"
            done += 1
            if done == syncs:
                return
    raise AssertionError(f"only {done} of {syncs} syncs")


def test_a_streaming_run_resumes_every_fragments_optimizer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(30, 10)
    with serve_in_thread(_config(tmp_path)) as first:
        with DiLoCoClient(first.address, model, config=FAST) as client:
            _train(client, model, 3, seed=1)
        before, state_before = first.status(), _state(first)
    # Rounds on v0, v1, v2 synced fragments 0, 1, 0.
    assert (state_before["fragment0.steps"], state_before["fragment1.steps"]) == (2, 1)

    with serve_in_thread(_config(tmp_path)) as second:
        resumed, state_resumed = second.status(), _state(second)
        torch.manual_seed(99)
        newcomer = nn.Linear(30, 10)
        with DiLoCoClient(second.address, newcomer, config=FAST) as client:
            _train(client, newcomer, 2, seed=2)
            assert client.model_version == 5
        state_after = _state(second)

    assert resumed.model_sha256 == before.model_sha256
    assert resumed.model_version == 3
    assert state_resumed.keys() == state_before.keys()
    for key, value in state_before.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(state_resumed[key], value, rtol=0, atol=0)
        else:
            assert state_resumed[key] == value, key
    # Rounds on v3 and v4 synced fragments 1 and 0: one more step each.
    assert (state_after["fragment0.steps"], state_after["fragment1.steps"]) == (3, 2)
