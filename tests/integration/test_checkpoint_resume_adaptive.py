"""A FedAdam or FedYogi coordinator restarts from its checkpoint and carries on.

As tests/integration/test_checkpoint_resume.py, for the adaptive family:
real grpc.aio servers on 127.0.0.1 port 0, real DiLoCoClients whose
pseudo-gradients the test chooses (`tests.helpers.scripted`). After the
restart, the coordinator's weights and both moments must equal Reddi et
al.'s Algorithm 2 (written out below in float64) over every applied round,
each exactly once: a lost or doubled v would show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from tests.helpers.scripted import FAST, flat, random_steps, scripted_steps

LR, BETA1, BETA2, TAU = 0.02, 0.9, 0.99, 1e-3


def _config(directory: Path, name: str) -> CoordinatorConfig:
    return CoordinatorConfig(seed_from_first_client=True,
        listen="127.0.0.1:0", min_clients=1, inner_steps=1, chunk_bytes=1024,
        open_enrollment=True, checkpoint_dir=str(directory), checkpoint_keep=2,
        outer_optimizer=name, outer_lr=LR,  # type: ignore[arg-type]
    )  # fmt: skip


def _moments(coordinator: CoordinatorThread) -> tuple[torch.Tensor, torch.Tensor]:
    state = coordinator.running.runtime.engine.model.optimizer.state_dict()
    m, v = state["momentum_buffer"], state["second_moment"]
    assert isinstance(m, torch.Tensor)
    assert isinstance(v, torch.Tensor)
    return m.clone(), v.clone()


def _reference(
    name: str, initial: torch.Tensor, pushed: list[torch.Tensor]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Algorithm 2 in float64, the paper's sign: (x, m_paper, v)."""
    x = initial.double().numpy()
    m, v = np.zeros_like(x), np.full_like(x, TAU**2)
    for g in pushed:
        delta = -g.double().numpy()  # Δ_t: model difference = -pseudo-gradient
        m = BETA1 * m + (1 - BETA1) * delta
        if name == "fedadam":
            v = BETA2 * v + (1 - BETA2) * delta**2
        else:
            v = v - (1 - BETA2) * delta**2 * np.sign(v - delta**2)
        x = x + LR * m / (np.sqrt(v) + TAU)
    return x, m, v


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_restart_resumes_adaptive_moments_and_weights(
    tmp_path: Path, name: str
) -> None:
    # Arrange: three applied rounds from one client, then a clean stop.
    torch.manual_seed(0)
    model = nn.Linear(30, 10)
    initial = flat(model)
    size = initial.numel()
    with serve_in_thread(_config(tmp_path, name)) as first:
        with DiLoCoClient(first.address, model, inner_steps=1, config=FAST) as client:
            pushed = scripted_steps(client, model, random_steps(3, size, seed=1))
        moments_before = _moments(first)

    # Act: restart on the same directory; a new client pulls and pushes twice.
    with serve_in_thread(_config(tmp_path, name)) as second:
        moments_resumed = _moments(second)
        torch.manual_seed(99)
        newcomer = nn.Linear(30, 10)
        with DiLoCoClient(
            second.address, newcomer, inner_steps=1, config=FAST
        ) as client:
            pushed += scripted_steps(client, newcomer, random_steps(2, size, seed=2))
            assert client.model_version == 5
        m_after, v_after = _moments(second)

    # Assert: the moments came back exactly; five rounds, each applied once.
    for resumed, before in zip(moments_resumed, moments_before, strict=True):
        torch.testing.assert_close(resumed, before, rtol=0, atol=0)
    x, m_paper, v = _reference(name, initial, pushed)
    np.testing.assert_allclose(flat(newcomer).numpy(), x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m_after.numpy(), -m_paper, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(v_after.numpy(), v, rtol=1e-5, atol=1e-12)
