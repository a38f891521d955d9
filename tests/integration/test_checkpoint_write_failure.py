"""A failed checkpoint write, seen through `fedgrpc.Coordinator` and a real client.

The write fails where a full disk makes it fail, on the writer thread with
ENOSPC (a fault hook, so no root is needed; tests/system/test_serve_disk_full.py
fills a real filesystem). The in-process API, metrics and gRPC health must
all say the coordinator is not serving; the client's round must not close
while its version is not on disk, and must close, applied, once a retry
writes it.
"""

from __future__ import annotations

import errno
import hashlib
import threading
import urllib.request
from pathlib import Path

import pytest
import torch
from torch import nn

import fedgrpc
from fedgrpc.client import DiLoCoClient
from fedgrpc.client.admin import check_health
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.faults import CheckpointStage, FaultHooks
from fedgrpc.coordinator.ops.checkpoint_file import list_rounds
from fedgrpc.coordinator.ops.model_export import newest_checkpoint
from tests.helpers.eventually import eventually
from tests.helpers.scripted import FAST, flat, random_steps, scripted_steps

WAIT_S = 30.0


class DiskFull(FaultHooks):
    """Checkpoint writes fail with ENOSPC while `full` is set."""

    def __init__(self) -> None:
        self.full = threading.Event()

    def checkpoint_write(self, stage: CheckpointStage, round_id: int) -> None:
        if stage == "before_replace" and self.full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")


def _serving_metric(coordinator: fedgrpc.Coordinator) -> str:
    address = coordinator.runtime.metrics.address
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text: str = reply.read().decode()
    return next(x for x in text.splitlines() if x.startswith("fedgrpc_serving "))


def test_a_round_whose_checkpoint_fails_closes_only_once_a_retry_wrote_it(
    tmp_path: Path,
) -> None:
    # Arrange: one client, a round per step; round 1 is written normally.
    disk = DiskFull()
    config = CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, min_clients=1, inner_steps=1,
        chunk_bytes=1024, seed_from_first_client=True,
        checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_retry_max_s=0.1,
        metrics_listen="127.0.0.1:0",
    )  # fmt: skip
    torch.manual_seed(0)
    model = nn.Linear(20, 5)
    steps = random_steps(2, flat(model).numel(), seed=1)
    with (
        fedgrpc.Coordinator(config, faults=disk) as coordinator,
        DiLoCoClient(coordinator.address, model, inner_steps=1, config=FAST) as client,
    ):
        scripted_steps(client, model, steps[:1])
        assert coordinator.status().serving

        # Act: the disk is full when round 2 is applied.
        disk.full.set()
        errors: list[BaseException] = []

        def second_round() -> None:
            try:
                scripted_steps(client, model, steps[1:])
            except BaseException as exc:
                errors.append(exc)

        syncing = threading.Thread(target=second_round, name="round-2")
        syncing.start()

        # Assert: not serving, everywhere an operator or a balancer looks.
        eventually(lambda: not coordinator.status().serving, WAIT_S)
        status = coordinator.status()
        assert "No space left on device" in status.not_serving_reason
        assert "model version 2 is not on disk" in status.not_serving_reason
        assert check_health(coordinator.address) == "NOT_SERVING"
        assert _serving_metric(coordinator) == "fedgrpc_serving 0.0"
        assert list_rounds(tmp_path / "ckpt")[-1] == 1
        assert syncing.is_alive()  # its round's close is held back
        assert client.model_version == 1

        # Act: space comes back.
        disk.full.clear()
        syncing.join(WAIT_S)

        # Assert: the retry wrote version 2, then the client got it, applied.
        assert not syncing.is_alive()
        assert not errors, errors
        assert client.model_version == 2
        assert client.last_round_outcome == "applied"
        status = coordinator.status()
        assert status.serving
        assert status.not_serving_reason == ""
        assert check_health(coordinator.address) == "SERVING"
        assert _serving_metric(coordinator) == "fedgrpc_serving 1.0"
        on_disk = newest_checkpoint(tmp_path / "ckpt")
        assert on_disk.state["model_version"] == 2
        digest = hashlib.sha256(on_disk.tensors["master"].numpy().tobytes())
        assert digest.digest() == hashlib.sha256(flat(model).numpy().tobytes()).digest()
        assert not list((tmp_path / "ckpt").glob(".round-*"))  # no temp file left


def test_the_run_finishes_only_once_its_final_checkpoint_is_written(
    tmp_path: Path,
) -> None:
    # Arrange: a one-round run whose final checkpoint write fails.
    disk = DiskFull()
    config = CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, min_clients=1, inner_steps=1,
        chunk_bytes=1024, seed_from_first_client=True, max_rounds=1,
        checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_retry_max_s=0.1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = nn.Linear(20, 5)
    step = random_steps(1, flat(model).numel(), seed=1)
    with (
        fedgrpc.Coordinator(config, faults=disk) as coordinator,
        DiLoCoClient(coordinator.address, model, inner_steps=1, config=FAST) as client,
    ):
        disk.full.set()
        syncing = threading.Thread(target=scripted_steps, args=(client, model, step))
        syncing.start()

        # Assert: the last round was applied in memory, but the run is not
        # finished while its result is not on disk.
        eventually(lambda: not coordinator.status().serving, WAIT_S)
        with pytest.raises(TimeoutError):
            coordinator.wait_finished(timeout=1.0)
        assert syncing.is_alive()

        # Act: space comes back.
        disk.full.clear()
        status = coordinator.wait_finished(timeout=WAIT_S)
        syncing.join(WAIT_S)

        # Assert: finished, on disk, and the client holds the final model.
        assert status.serving
        assert status.phase == "finished"
        assert newest_checkpoint(tmp_path / "ckpt").state["model_version"] == 1
        assert not syncing.is_alive()
        assert client.model_version == 1
