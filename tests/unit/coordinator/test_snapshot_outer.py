"""Checkpoints of the adaptive outer optimizers and FedAvgM, without gRPC.

As tests/unit/coordinator/test_snapshot.py: the engine's own close path on a
real `CoordinatorRuntime`, its own `save_checkpoint`, and a second runtime
on the same directory. Here the state to carry over is FedAdam's and
FedYogi's two moments (and FedAvgM's buffer); after the restart both
runtimes take the same next step and must agree bit for bit.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgrpc.aggregate import StreamingSum
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.runtime import CoordinatorRuntime
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.errors import CheckpointError
from fedgrpc.optim import StateDict

SPEC = ModelSpec((TensorSpec("layer.weight", (4, 5), DType.FLOAT32),))
N = SPEC.num_coordinates


def _runtime(directory: Path, **settings: object) -> CoordinatorRuntime:
    config = CoordinatorConfig(seed_from_first_client=True,
        listen="127.0.0.1:0", min_clients=1, open_enrollment=True,
        checkpoint_dir=str(directory), **settings,  # type: ignore[arg-type]
    )  # fmt: skip
    return CoordinatorRuntime(config)


def _seed(runtime: CoordinatorRuntime, weights: torch.Tensor) -> None:
    runtime.engine.model.adopt_spec(SPEC)
    runtime.engine.model.seed(weights.clone())
    runtime.engine._open_round()  # what a seeding commit does


def _apply(runtime: CoordinatorRuntime, gradient: torch.Tensor) -> None:
    """One round with one update of `gradient`, through the engine's close path."""
    engine = runtime.engine
    closing = engine.begin_close()
    closing.total = StreamingSum(torch.zeros(N))
    closing.total.add_chunk(0, gradient.numpy(), 1.0, np.empty(N, dtype=np.float32))
    closing.total.commit(1.0)
    closing.contributors.add("c00001")
    assert engine.apply(closing, copy_on_write=False)
    engine.finish_close(closing, True, "test")


def _gradients(count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    return [0.1 * torch.randn(N, generator=generator) for _ in range(count)]


def _adam_reference(
    initial: torch.Tensor, gradients: list[torch.Tensor], lr: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reddi et al. 2021, Algorithm 2 (FedAdam) in float64: (x, m_paper, v)."""
    x, m, v = initial.double().numpy(), np.zeros(N), np.full(N, 1e-3**2)
    for g in gradients:
        delta = -g.double().numpy()  # the paper's Δ is the model difference
        m = 0.9 * m + 0.1 * delta
        v = 0.99 * v + 0.01 * delta**2
        x = x + lr * m / (np.sqrt(v) + 1e-3)
    return x, m, v


def _copied(state: StateDict) -> dict[str, torch.Tensor]:
    """The state's tensors, cloned (the live ones change at the next step)."""
    return {
        k: v.clone() if isinstance(v, torch.Tensor) else torch.tensor(v)
        for k, v in state.items()
    }


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedavgm"])
def test_restart_restores_outer_state_and_the_next_step_is_bit_identical(
    tmp_path: Path, name: str
) -> None:
    # Arrange: three applied rounds, a checkpoint, a restart on its directory.
    initial = torch.linspace(-1, 1, N)
    first = _runtime(tmp_path, outer_optimizer=name)
    _seed(first, initial)
    gradients = _gradients(4)
    for gradient in gradients[:3]:
        _apply(first, gradient)
    asyncio.run(first.save_checkpoint())
    first.checkpoints.close()
    second = _runtime(tmp_path, outer_optimizer=name)
    saved = _copied(first.engine.model.optimizer.state_dict())
    restored = _copied(second.engine.model.optimizer.state_dict())

    # Act: both take the same fourth step.
    _apply(first, gradients[3])
    _apply(second, gradients[3])

    # Assert: every state entry came back exactly, and the step agrees bitwise.
    assert second.engine.model.optimizer.name == name
    assert restored["steps"] == 3
    assert restored.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(restored[key], value), key
    assert torch.equal(first.engine.model.master, second.engine.model.master)  # type: ignore[arg-type]
    after_first = first.engine.model.optimizer.state_dict()
    after_second = second.engine.model.optimizer.state_dict()
    for key, live in after_first.items():
        if isinstance(live, torch.Tensor):
            assert torch.equal(live, after_second[key]), key  # type: ignore[arg-type]
    second.checkpoints.close()


def test_fedadam_checkpoint_holds_algorithm_2s_moments(tmp_path: Path) -> None:
    # Arrange
    initial = torch.linspace(-1, 1, N)
    first = _runtime(tmp_path, outer_optimizer="fedadam", outer_lr=0.05)
    _seed(first, initial)
    gradients = _gradients(3)
    for gradient in gradients:
        _apply(first, gradient)
    asyncio.run(first.save_checkpoint())
    first.checkpoints.close()

    # Act
    second = _runtime(tmp_path, outer_optimizer="fedadam", outer_lr=0.05)

    # Assert: the restored weights and moments are the formula's (ours: m = -m_paper).
    x, m_paper, v = _adam_reference(initial, gradients, lr=0.05)
    state = second.engine.model.optimizer.state_dict()
    np.testing.assert_allclose(second.engine.model.master, x, rtol=1e-5, atol=1e-6)  # type: ignore[arg-type]
    np.testing.assert_allclose(state["momentum_buffer"], -m_paper, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(state["second_moment"], v, rtol=1e-5, atol=1e-12)
    second.checkpoints.close()


@pytest.mark.parametrize(
    ("written_by", "resumed_as"),
    [("fedadam", "fedyogi"), ("nesterov", "fedavgm"), ("fedyogi", "fedadagrad")],
)
def test_resuming_under_another_outer_optimizer_names_both(
    tmp_path: Path, written_by: str, resumed_as: str
) -> None:
    # FedAvgM's state has Nesterov's keys, Yogi's has Adam's: only the
    # recorded name tells them apart, so the name check must refuse.
    first = _runtime(tmp_path, outer_optimizer=written_by)
    _seed(first, torch.zeros(N))
    _apply(first, _gradients(1)[0])
    asyncio.run(first.save_checkpoint())
    first.checkpoints.close()

    with pytest.raises(CheckpointError) as refused:
        _runtime(tmp_path, outer_optimizer=resumed_as)

    message = str(refused.value)
    assert f"outer optimizer {written_by!r}" in message
    assert f"the config says {resumed_as!r}" in message
