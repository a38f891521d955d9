"""A centered-clipping coordinator restarts with its previous aggregate, not from 0.

Centered clipping (Karimireddy et al. 2021) starts each round from the
previous round's aggregate v⁰, so that vector is run state like the outer
momentum: it is checkpointed and restored. Real grpc.aio servers on
127.0.0.1 port 0, real DiLoCoClients pushing pseudo-gradients the test
chooses (`tests.helpers.scripted`). With one client, one pass and a fixed τ
the rule is v ← v + (x - v)·min(1, τ/‖x - v‖): after the restart the weights
must follow that recursion from the saved v, which differs from v = 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedgrpc.aggregate import CenteredClipping
from fedgrpc.client import DiLoCoClient
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from tests.helpers.scripted import FAST, flat, random_steps, scripted_steps

TAU = 0.05  # below the pushed steps' norms (~0.5): every round clips


def _config(directory: Path) -> CoordinatorConfig:
    return CoordinatorConfig(seed_from_first_client=True,
        listen="127.0.0.1:0", min_clients=1, inner_steps=1, chunk_bytes=1024,
        open_enrollment=True, checkpoint_dir=str(directory), checkpoint_keep=2,
        outer_optimizer="fedavg", outer_lr=1.0, aggregator="centered_clipping",
        clipping_tau=TAU, clipping_iters=1, spool_dir=str(directory / "spool"),
    )  # fmt: skip


def _previous(coordinator: CoordinatorThread) -> torch.Tensor:
    rule = coordinator.running.runtime.engine.stages.aggregator
    assert isinstance(rule, CenteredClipping)
    state = rule.state_dict()
    previous = state["previous_aggregate"]
    assert isinstance(previous, torch.Tensor)
    return previous.clone()


def _reference(initial: torch.Tensor, pushed: list[torch.Tensor]) -> np.ndarray:
    """Weights after fedavg (lr 1) on the one-client CC aggregates, float64."""
    x, v = initial.double().numpy(), np.zeros(initial.numel())
    for g in pushed:
        diff = g.double().numpy() - v
        v = v + diff * min(1.0, TAU / float(np.linalg.norm(diff)))
        x = x - v
    return x


def test_restart_resumes_centered_clipping_from_the_saved_aggregate(
    tmp_path: Path,
) -> None:
    # Arrange: two applied rounds from one client, then a clean stop.
    torch.manual_seed(0)
    model = nn.Linear(30, 10)
    initial = flat(model)
    size = initial.numel()
    (tmp_path / "spool").mkdir()
    with serve_in_thread(_config(tmp_path)) as first:
        with DiLoCoClient(first.address, model, inner_steps=1, config=FAST) as client:
            pushed = scripted_steps(client, model, random_steps(2, size, seed=1))
        saved = _previous(first)

    # Act: restart on the same directory; a new client pushes twice more.
    with serve_in_thread(_config(tmp_path)) as second:
        resumed = _previous(second)
        newcomer = nn.Linear(30, 10)
        with DiLoCoClient(
            second.address, newcomer, inner_steps=1, config=FAST
        ) as client:
            pushed += scripted_steps(client, newcomer, random_steps(2, size, seed=2))
            assert client.model_version == 4

    # Assert: v came back bit for bit, and the later rounds started from it.
    assert float(saved.norm()) > 0
    torch.testing.assert_close(resumed, saved, rtol=0, atol=0)
    np.testing.assert_allclose(
        flat(newcomer).numpy(), _reference(initial, pushed), rtol=1e-5, atol=1e-6
    )
