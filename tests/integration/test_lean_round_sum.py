"""Lean rounds step from a sum on disk and publish the weights RAM rounds publish.

The same three Nesterov rounds (two signed clients, unequal sample counts,
updates with exact and negative zeros) through a real coordinator on
127.0.0.1 three ways: lean (`staging_memory_mb = 0`, `outer_state_on_disk`:
the sum stays in a file and the step reads it by blocks), every update
staged on disk with the sum and momentum in RAM (today's path before the
sum went to disk), and the defaults. The model is over two 4 MiB blocks
long and has a buffer across the first block boundary, so the block-wise
step and the buffers' averaging both show if they drift by one bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.optim.offload import BLOCK_COORDINATES
from tests.helpers.eventually import eventually
from tests.helpers.federation import identity_files, two_allowed_clients
from tests.helpers.raw import join, pull, stub, update_messages

SPEC = ModelSpec(
    (
        TensorSpec("w", (BLOCK_COORDINATES - 100,), DType.FLOAT32),
        TensorSpec("bn.running_var", (300,), DType.FLOAT32, buffer=True),
        TensorSpec("v", (BLOCK_COORDINATES + 1234,), DType.FLOAT32),
    )
)
D = SPEC.num_coordinates
CHUNK = 1 << 16
ROUNDS = 3
LEAN: dict[str, Any] = {"staging_memory_mb": 0, "outer_state_on_disk": True}


def _values(rng: np.random.Generator, scale: float) -> np.ndarray:
    values = (rng.standard_normal(D) * scale).astype(np.float32)
    values[rng.integers(0, D, size=D // 20)] = -0.0
    values[rng.integers(0, D, size=D // 20)] = 0.0
    return values


def _run(tmp_path: Path, name: str, settings: dict[str, Any]) -> list[np.ndarray]:
    """The weights published after each round under `settings`."""
    keys, spool = tmp_path / name, tmp_path / f"spool-{name}"
    spool.mkdir()
    a_key, b_key = two_allowed_clients(keys)
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        **identity_files(keys),
        min_clients=2,
        inner_steps=5,
        chunk_bytes=CHUNK * 4,
        outer_optimizer="nesterov",
        spool_dir=str(spool),
    ).replace(**settings)
    rng = np.random.default_rng(7)  # the same updates for every setting
    published = []
    with serve_in_thread(config) as coordinator:
        on_disk = coordinator.running.runtime.engine.stages.sum_on_disk
        assert on_disk is (settings == LEAN)
        channel, service = stub(coordinator.address)
        with channel:
            a = join(service, SPEC, "a", key=a_key)
            b = join(service, SPEC, "b", key=b_key)
            service.PushUpdate(
                update_messages(a, _values(rng, 1.0), round_id=0, base_version=0,
                                initial=True, chunk_coords=CHUNK),
                timeout=30,
            )  # fmt: skip
            for version in range(ROUNDS):
                round_id = coordinator.status().round_id
                for joined, samples in ((a, 3), (b, 5)):
                    service.PushUpdate(
                        update_messages(joined, _values(rng, 0.01), round_id=round_id,
                                        base_version=version, chunk_coords=CHUNK,
                                        num_samples=samples),
                        timeout=30,
                    )  # fmt: skip
                got, weights = pull(service, a, min_version=version + 1, timeout=30)
                assert got == version + 1
                published.append(weights)
    assert list(spool.iterdir()) == []  # stages and sums were never named
    return published


def test_lean_rounds_publish_the_weights_of_rounds_with_the_sum_in_ram(
    tmp_path: Path,
) -> None:
    lean = _run(tmp_path, "lean", LEAN)
    staged = _run(tmp_path, "staged", {"staging_memory_mb": 0})
    default = _run(tmp_path, "default", {})
    for version, (x, y, z) in enumerate(zip(lean, staged, default, strict=True)):
        assert np.array_equal(x.view(np.uint32), y.view(np.uint32)), version
        # The defaults' first update *is* the sum (no 0 + u₁): equal up to
        # the sign of zero.
        assert np.array_equal(x, z), version
    assert not np.array_equal(lean[0], lean[-1])  # the rounds moved the weights


def test_a_lean_round_whose_mean_is_not_finite_changes_nothing(
    tmp_path: Path,
) -> None:
    """The norm pass stands in for the step's NaN check: the round is void."""
    keys = tmp_path / "keys"
    a_key, b_key = two_allowed_clients(keys)
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        **identity_files(keys),
        min_clients=2,
        chunk_bytes=CHUNK * 4,
        max_update_norm_growth=0.0,  # the guard's NaN/Inf check only
        spool_dir=str(tmp_path),
        **LEAN,
    )
    rng = np.random.default_rng(8)
    with serve_in_thread(config) as coordinator:
        channel, service = stub(coordinator.address)
        with channel:
            a = join(service, SPEC, "a", key=a_key)
            b = join(service, SPEC, "b", key=b_key)
            seed = _values(rng, 1.0)
            service.PushUpdate(
                update_messages(a, seed, round_id=0, base_version=0, initial=True,
                                chunk_coords=CHUNK),
                timeout=30,
            )  # fmt: skip
            huge = np.full(D, 3e38, np.float32)  # finite, but the sum overflows
            round_id = coordinator.status().round_id
            for joined in (a, b):
                service.PushUpdate(
                    update_messages(joined, huge, round_id=round_id, base_version=0,
                                    chunk_coords=CHUNK),
                    timeout=30,
                )  # fmt: skip
            closed = eventually(lambda: coordinator.status().recent_rounds)
            assert "not finite" in closed[-1].reason
            assert coordinator.status().model_version == 0
            version, weights = pull(service, a, timeout=30)
            assert version == 0
            assert np.array_equal(weights.view(np.uint32), seed.view(np.uint32))
