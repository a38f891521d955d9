"""`DurableGate` on a real `CoordinatorRuntime`: unsaved versions are held back.

Checkpoint writes fail with ENOSPC where a full disk fails them (a fault
hook on the writer thread, after the temp file was written). While they
fail the version is not durable, announcements wait, no round is applied
and the runtime reports not serving; the first retry that succeeds undoes
all of it, once.
"""

from __future__ import annotations

import asyncio
import errno
import threading
from pathlib import Path

import pytest
import torch

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.faults import CheckpointStage, FaultHooks
from fedgrpc.coordinator.ops.checkpoint_file import list_rounds
from fedgrpc.coordinator.runtime import CoordinatorRuntime
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.errors import ConfigError

SPEC = ModelSpec((TensorSpec("w", (8,), DType.FLOAT32),))
BOUND_S = 10.0
"""Bound on any wait below (retries come every 0.01 s)."""


class DiskFull(FaultHooks):
    """Checkpoint writes fail with ENOSPC while `full` is set; counts attempts."""

    def __init__(self) -> None:
        self.full = threading.Event()
        self.attempts = 0

    def checkpoint_write(self, stage: CheckpointStage, round_id: int) -> None:
        if stage == "before_replace":
            self.attempts += 1
            if self.full.is_set():
                raise OSError(errno.ENOSPC, "No space left on device")


def _runtime(directory: Path, faults: FaultHooks) -> CoordinatorRuntime:
    config = CoordinatorConfig(
        seed_from_first_client=True, listen="127.0.0.1:0", min_clients=1,
        open_enrollment=True, checkpoint_dir=str(directory),
        checkpoint_retry_max_s=0.01,
    )  # fmt: skip
    runtime = CoordinatorRuntime(config, faults=faults)
    runtime.engine.model.adopt_spec(SPEC)
    runtime.engine.model.seed(torch.zeros(8))
    runtime.engine._open_round()  # what a seeding commit does
    return runtime


def test_a_failed_write_holds_announcements_and_serves_again_after_a_retry(
    tmp_path: Path,
) -> None:
    disk = DiskFull()
    runtime = _runtime(tmp_path, disk)
    gate, store = runtime.durable, runtime.checkpoints
    announced: list[str] = []
    health: list[bool] = []

    async def announcement() -> None:
        announced.append("version 0")

    async def scenario() -> None:
        serving_again = asyncio.Event()

        async def listener(serving: bool) -> None:  # what drives grpc health
            health.append(serving)
            if serving:
                serving_again.set()

        gate.watch(listener)
        # Act: the first write of version 0 fails.
        disk.full.set()
        assert not await runtime.save_checkpoint()
        await gate.announce(announcement)

        # Assert: held back, not served, reported with the OS's reason.
        assert not gate.serving
        assert not store.is_durable(0)
        assert announced == []
        assert "No space left on device (errno 28)" in gate.not_serving_reason
        assert str(tmp_path) not in gate.not_serving_reason
        assert runtime.metrics.serving._value.get() == 0
        assert list_rounds(tmp_path) == []

        # Act: the disk recovers; the retry loop writes it.
        attempts = disk.attempts
        disk.full.clear()
        async with asyncio.timeout(BOUND_S):
            await serving_again.wait()

        # Assert: durable, served, announced exactly once.
        assert disk.attempts > attempts
        assert store.is_durable(0)
        assert announced == ["version 0"]
        assert gate.not_serving_reason == ""
        assert runtime.metrics.serving._value.get() == 1
        assert list_rounds(tmp_path) == [0]
        await gate.announce(announcement)  # serving: runs at once
        assert announced == ["version 0", "version 0"]
        await runtime.stop()

    asyncio.run(scenario())
    assert health == [False, True]
    temp_files = [p for p in tmp_path.iterdir() if p.name.startswith(".round-")]
    assert temp_files == []  # each failed attempt removed its temp file
    store.close()


def test_no_round_is_applied_while_a_version_is_not_on_disk(tmp_path: Path) -> None:
    disk = DiskFull()
    runtime = _runtime(tmp_path, disk)
    disk.full.set()

    async def scenario() -> None:
        assert not await runtime.save_checkpoint()
        current = runtime.engine.current
        assert current is not None
        current.deadline_s = 0.0  # past due: it would close now if serving
        await runtime.maybe_close_round()
        assert runtime.engine.current is current  # still open, nothing applied
        assert not runtime.engine.history
        await runtime.stop()  # stops the retries too

    asyncio.run(scenario())
    assert not runtime.durable.serving
    runtime.checkpoints.close()


def test_checkpoint_retry_max_s_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="checkpoint_retry_max_s"):
        CoordinatorConfig(checkpoint_retry_max_s=0)
