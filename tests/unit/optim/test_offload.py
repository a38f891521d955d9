"""`outer_state_on_disk`: the optimizer state in a file, stepped by blocks.

Every built-in optimizer is run side by side in memory and on disk over a
model that is not a whole number of blocks; weights and state must be equal
bit for bit after every step, through a checkpoint round trip too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import torch

from fedgrpc.config import OUTER_OPTIMIZERS, CoordinatorConfig, OuterOptimizerName
from fedgrpc.coordinator.strategy.wiring import build_outer
from fedgrpc.errors import ConfigError, InvalidUpdateError
from fedgrpc.optim import AdaptiveSettings, build_outer_optimizer
from fedgrpc.optim.offload import BLOCK_COORDINATES, DiskStateOptimizer

NUM = 2 * BLOCK_COORDINATES + 12_345
"""Two whole blocks and a ragged tail."""
STEPS = 3


def _pair(name: str) -> tuple[object, DiskStateOptimizer]:
    def build() -> object:
        lr = 0.01 if name in ("fedadam", "fedyogi", "fedadagrad") else 0.7
        momentum = 0.9 if name in ("nesterov", "fedavgm") else 0.0
        return build_outer_optimizer(
            cast(OuterOptimizerName, name), lr, momentum, AdaptiveSettings()
        )

    return build(), DiskStateOptimizer(build())  # type: ignore[arg-type]


def _gradients(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(NUM, generator=generator) * 0.1 for _ in range(STEPS)]


@pytest.mark.parametrize("name", OUTER_OPTIMIZERS)
def test_every_built_in_matches_its_in_memory_self_bit_for_bit(
    name: str, tmp_path: Path
) -> None:
    in_memory, on_disk = _pair(name)
    on_disk.spool_dir = tmp_path
    weights = torch.randn(NUM, generator=torch.Generator().manual_seed(1))
    a, b = weights.clone(), weights.clone()
    for g in _gradients(2):
        in_memory.step(a, g.clone())  # type: ignore[attr-defined]
        on_disk.step(b, g.clone())
        assert torch.equal(a, b)
    _assert_same_state(in_memory.state_dict(), on_disk.state_dict())  # type: ignore[attr-defined]
    assert list(tmp_path.iterdir()) == []  # unlinked at creation
    if name in ("nesterov", "fedadam"):  # in RAM: one block per key at most
        inner_state = on_disk.inner.state_dict()
        assert all(not isinstance(v, torch.Tensor) for v in inner_state.values())


def test_a_checkpoint_round_trip_resumes_bit_for_bit() -> None:
    reference, first = _pair("fedyogi")
    weights = torch.randn(NUM, generator=torch.Generator().manual_seed(3))
    a, b = weights.clone(), weights.clone()
    grads = _gradients(4)
    for g in grads[:2]:
        reference.step(a, g.clone())  # type: ignore[attr-defined]
        first.step(b, g.clone())
    _, resumed = _pair("fedyogi")
    resumed.load_state_dict(first.state_dict())
    first.close()
    reference.step(a, grads[2].clone())  # type: ignore[attr-defined]
    resumed.step(b, grads[2].clone())
    assert torch.equal(a, b)


def test_a_nan_in_the_last_block_changes_nothing() -> None:
    _, on_disk = _pair("nesterov")
    weights = torch.randn(NUM)
    on_disk.step(weights, torch.full((NUM,), 0.01))
    before_weights, before_state = weights.clone(), on_disk.state_dict()
    poisoned = torch.full((NUM,), 0.01)
    poisoned[-1] = float("nan")
    with pytest.raises(InvalidUpdateError, match="NaN"):
        on_disk.step(weights, poisoned)
    assert torch.equal(weights, before_weights)
    assert torch.equal(
        cast(torch.Tensor, on_disk.state_dict()["momentum_buffer"]),
        cast(torch.Tensor, before_state["momentum_buffer"]),
    )
    with pytest.raises(InvalidUpdateError, match="same model"):
        on_disk.step(weights[:-1], torch.zeros(NUM - 1))


def test_the_setting_wraps_built_ins_and_refuses_plugins() -> None:
    built = build_outer(CoordinatorConfig(outer_state_on_disk=True))
    assert isinstance(built, DiskStateOptimizer)
    assert built.name == "nesterov"
    assert not isinstance(build_outer(CoordinatorConfig()), DiskStateOptimizer)
    plugin = CoordinatorConfig(
        outer_optimizer="fedgrpc.optim.momentum:FedAvgOuterOptimizer",
        outer_state_on_disk=True,
    )
    with pytest.raises(
        ConfigError, match="outer_state_on_disk = true needs a built-in"
    ):
        build_outer(plugin)


@pytest.mark.parametrize("name", ["nesterov", "fedadam"])
def test_a_gradient_read_block_by_block_steps_as_the_whole_one(
    name: str, tmp_path: Path
) -> None:
    """`step_blocks` (a lean round's mean on disk) gives `step`'s bits."""
    whole, blocks = _pair(name)[1], _pair(name)[1]
    whole.spool_dir = blocks.spool_dir = tmp_path
    weights = torch.randn(NUM, generator=torch.Generator().manual_seed(3))
    a, b = weights.clone(), weights.clone()
    asked: list[tuple[int, int]] = []
    for g in _gradients(4):

        def read(lo: int, hi: int, g: torch.Tensor = g) -> torch.Tensor:
            asked.append((lo, hi))
            return g[lo:hi].clone()

        whole.step(a, g.clone())
        blocks.step_blocks(b, read)
        assert torch.equal(a, b)
    each_step = [
        (lo, min(NUM, lo + BLOCK_COORDINATES))
        for lo in range(0, NUM, BLOCK_COORDINATES)
    ]
    assert asked == each_step * STEPS
    _assert_same_state(whole.state_dict(), blocks.state_dict())


def _assert_same_state(expected: dict[str, Any], got: dict[str, Any]) -> None:
    """Equal keys, tensors equal bit for bit, everything else equal."""
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, cast(torch.Tensor, got[key])), key
        else:
            assert value == got[key], key
