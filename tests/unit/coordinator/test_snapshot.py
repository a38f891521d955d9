"""Capture and restore of the coordinator's state, without gRPC.

The engine is driven through its own close path (`begin_close`, `apply`,
`finish_close`) on a real `CoordinatorRuntime`, checkpointed with the
runtime's own `save_checkpoint`, then a second runtime on the same
directory must continue exactly where the first stopped.
"""

from __future__ import annotations

import asyncio
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgrpc.aggregate import StreamingSum
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.ops.checkpoint_content import _base_digests, _guard_history
from fedgrpc.coordinator.runtime import CoordinatorRuntime
from fedgrpc.coordinator.services.admin import build_status
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.errors import CheckpointError

SPEC = ModelSpec(
    (
        TensorSpec("layer.weight", (3, 4), DType.FLOAT32),
        TensorSpec("layer.bias", (3,), DType.BFLOAT16),
    )
)
N = SPEC.num_coordinates


def _runtime(directory: Path, **settings: object) -> CoordinatorRuntime:
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        min_clients=1,
        open_enrollment=True,
        checkpoint_dir=str(directory),
        **settings,  # type: ignore[arg-type]
    )
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
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(N, generator=generator) for _ in range(count)]


def _reference(initial: torch.Tensor, gradients: list[torch.Tensor]) -> torch.optim.SGD:
    param = torch.nn.Parameter(initial.clone())
    optimizer = torch.optim.SGD([param], lr=0.7, momentum=0.9, nesterov=True)
    for gradient in gradients:
        param.grad = gradient.clone()
        optimizer.step()
    return optimizer


def test_restart_continues_run_version_momentum_clients_and_history(
    tmp_path: Path,
) -> None:
    # Arrange: seed, two clients with credit, three applied rounds, a checkpoint.
    initial = torch.linspace(-1, 1, N)
    first = _runtime(tmp_path)
    _seed(first, initial)
    key = PrivateKey.generate().public_key
    alice = first.registry.add("alice", 0.0, key)
    first.registry.add("bob", 0.0)
    alice.samples_contributed, alice.updates_accepted, alice.last_round = 96, 3, 3
    alice.last_train_loss = 1.25
    gradients = _gradients(3)
    for gradient in gradients:
        _apply(first, gradient)
    first.run.bytes_received, first.run.bytes_sent = 1234, 5678
    asyncio.run(first.save_checkpoint())
    first.checkpoints.close()
    before = first.engine

    # Act
    second = _runtime(tmp_path)

    # Assert: the same run, model, momentum, round counter, clients and history.
    after = second.engine
    assert second.run.run_id == first.run.run_id
    assert after.model.version == 3
    assert torch.equal(after.model.master, before.model.master)  # type: ignore[arg-type]
    assert after.model.published is not None
    assert before.model.published is not None
    published = after.model.published.digests.known()
    assert published == before.model.published.digests.known()
    assert set(published) == {"blake3"}  # no SHA-256 client: never hashed with it
    assert after.model.guard.history == before.model.guard.history
    state = after.model.optimizer.state_dict()
    assert state["steps"] == 3
    reference = _reference(initial, gradients)
    expected_buffer = next(iter(reference.state.values()))["momentum_buffer"]
    torch.testing.assert_close(state["momentum_buffer"], expected_buffer)
    assert after.current is not None
    assert before.current is not None
    assert after.current.round_id == 4
    assert after.current.nonce != before.current.nonce  # a reopened round is new
    assert list(after.history) == list(before.history)
    restored = {c.client_id: c for c in second.registry.all()}
    assert restored["c00001"].public_key == key
    assert restored["c00001"].samples_contributed == 96
    assert restored["c00001"].last_train_loss == 1.25
    # buffered_async's memory: the base each version signs, and the base of
    # alice's last applied update (so the same progress cannot count twice).
    bases = {v: d.known() for v, d in after.participation.base_digests.items()}
    assert bases == {v: d.known() for v, d in before.participation.base_digests.items()}
    assert set(bases) == {0, 1, 2, 3}
    assert alice.last_applied_base == 2  # round 3 was based on version 2
    assert restored["c00001"].last_applied_base == 2
    assert not restored["c00001"].connected
    assert restored["c00001"].session_token != alice.session_token
    assert second.registry.add("carol", 0.0).client_id == "c00003"
    assert (second.run.bytes_received, second.run.bytes_sent) == (1234, 5678)
    second.checkpoints.close()


def test_each_applied_round_is_checkpointed_before_it_is_served(
    tmp_path: Path,
) -> None:
    runtime = _runtime(tmp_path)
    _seed(runtime, torch.zeros(N))
    _apply(runtime, _gradients(1)[0])
    release = threading.Event()
    store = runtime.checkpoints
    real_write = store._dir.write  # type: ignore[union-attr]

    def slow_write(*args: object) -> Path:
        release.wait(10)
        return real_write(*args)  # type: ignore[arg-type]

    store._dir.write = slow_write  # type: ignore[union-attr, method-assign]

    async def scenario() -> None:
        saving = asyncio.create_task(runtime.save_checkpoint())
        await asyncio.sleep(0.05)
        assert not store.is_durable(1)  # PullModel waits for this version
        assert store.is_durable(0)
        release.set()
        await saving
        assert store.is_durable(1)

    asyncio.run(scenario())
    assert store._dir.rounds() == [1]  # type: ignore[union-attr]
    store.close()


def test_resuming_with_another_outer_optimizer_is_refused(tmp_path: Path) -> None:
    first = _runtime(tmp_path)
    _seed(first, torch.zeros(N))
    _apply(first, _gradients(1)[0])
    asyncio.run(first.save_checkpoint())
    first.checkpoints.close()

    with pytest.raises(CheckpointError, match="outer optimizer 'nesterov'"):
        _runtime(tmp_path, outer_optimizer="fedavg")


def test_no_checkpoint_dir_means_no_files_and_a_fresh_run(tmp_path: Path) -> None:
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        min_clients=1,
        open_enrollment=True,
    )
    runtime = CoordinatorRuntime(config)
    _seed(runtime, torch.zeros(N))
    _apply(runtime, _gradients(1)[0])

    asyncio.run(runtime.save_checkpoint())

    assert runtime.checkpoints.last_path is None
    assert CoordinatorRuntime(config).run.run_id != runtime.run.run_id


def test_a_checkpoint_with_overflowed_credit_restores_saturated_and_status_works(
    tmp_path: Path,
) -> None:
    # What a coordinator before issue 13 checkpointed after two 2^64-1 claims.
    first = _runtime(tmp_path)
    _seed(first, torch.zeros(N))
    liar = first.registry.add("liar", 0.0, PrivateKey.generate().public_key)
    liar.updates_accepted = 2  # with credit: checkpoints keep only such records
    liar.samples_contributed, liar.last_train_loss = 2 * (2**64 - 1), math.nan
    _apply(first, _gradients(1)[0])
    asyncio.run(first.save_checkpoint())
    first.checkpoints.close()

    second = _runtime(tmp_path)

    restored = second.registry.get(liar.client_id)
    assert restored is not None
    assert restored.samples_contributed == 2**63 - 1
    assert restored.last_train_loss == 0.0
    status = build_status(second)  # raised ValueError (gRPC: UNKNOWN) before
    assert status.clients[0].samples_contributed == 2**63 - 1
    second.checkpoints.close()


def test_bare_norms_of_an_older_checkpoint_age_from_the_round_that_made_the_model() -> (
    None
):
    state = {"update_norms": [1.0, 2.0], "model_round_id": 5}
    assert _guard_history(state) == [(5, 1.0), (5, 2.0)]


def test_base_digests_of_an_older_checkpoint_load_as_sha256_and_new_ones_by_hash() -> (
    None
):
    old = {"base_shas": {"3": "ab" * 32}}
    assert {v: d.known() for v, d in _base_digests(old).items()} == {
        3: {"sha256": bytes.fromhex("ab" * 32)}
    }
    new = {"base_digests": {"4": {"blake3": "cd" * 32, "sha256": "ef" * 32}}}
    assert _base_digests(new)[4].known() == {
        "blake3": bytes.fromhex("cd" * 32),
        "sha256": bytes.fromhex("ef" * 32),
    }
    with pytest.raises(CheckpointError, match="unknown hash 'md5'"):
        _base_digests({"base_digests": {"4": {"md5": "00" * 16}}})
