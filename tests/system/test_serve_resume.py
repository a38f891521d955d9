"""`fedgrpc serve` killed mid-checkpoint resumes with every round applied exactly once.

The crash windows are hit for real: the fault hook `CrashAt`
(tests/helpers/faults.py) makes the daemon SIGKILL itself while writing
round 3's checkpoint, either just before the rename (the round was
aggregated and stepped, but is not durable) or just after it. A restarted
daemon must resume at version 2 or 3 respectively, and the weights and
momentum after further rounds must equal torch's Nesterov SGD over the
rounds that were applied, each exactly once. Then SIGTERM drains: exit
code 0 and a final checkpoint.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.coordinator.ops.checkpoint_file import list_rounds
from fedgrpc.coordinator.ops.model_export import newest_checkpoint
from fedgrpc.errors import FedGrpcError
from tests.conftest import Spawn
from tests.helpers.scripted import (
    FAST,
    GIVE_UP_FAST,
    flat,
    nesterov_reference,
    random_steps,
    scripted_steps,
)
from tests.helpers.serve import log_events, start_serve

FEDGRPC = Path(sys.executable).with_name("fedgrpc")
pytestmark = pytest.mark.system
CRASH_ROUND = 3


def _serve(
    spawn: Spawn, tmp_path: Path, name: str, crash_at: str = ""
) -> tuple[subprocess.Popen[str], str]:
    flags = ["--min-clients", "1", "--inner-steps", "1", "--chunk-bytes", "1024",
             "--open-enrollment", "--checkpoint-dir",
             str(tmp_path / "ckpt")]  # fmt: skip
    return start_serve(spawn, tmp_path / f"{name}.log", *flags, crash_at=crash_at)


def _events(tmp_path: Path, name: str) -> list[dict[str, object]]:
    return log_events(tmp_path / f"{name}.log")


@pytest.mark.parametrize(
    ("window", "resumed_version"),
    [("before_replace", CRASH_ROUND - 1), ("after_replace", CRASH_ROUND)],
)
def test_sigkill_during_checkpoint_then_restart_applies_each_round_once(
    spawn: Spawn, tmp_path: Path, window: str, resumed_version: int
) -> None:
    # Arrange: rounds 1-2 land; round 3 kills the daemon inside its checkpoint.
    torch.manual_seed(0)
    model = nn.Linear(20, 5)
    initial, size = flat(model), flat(model).numel()
    first, address = _serve(spawn, tmp_path, "first", f"{window}:{CRASH_ROUND}")
    steps = random_steps(CRASH_ROUND, size, seed=1)
    pushed: list[torch.Tensor] = []
    with DiLoCoClient(address, model, inner_steps=1, config=GIVE_UP_FAST) as client:
        scripted_steps(client, model, steps[:-1], pushed)
        with pytest.raises(FedGrpcError):
            scripted_steps(client, model, steps[-1:], pushed)
    assert first.wait(timeout=30) == -signal.SIGKILL
    assert len(pushed) == CRASH_ROUND
    applied = pushed[:resumed_version]  # round 3 counts only if it was durable
    assert list_rounds(tmp_path / "ckpt")[-1] == resumed_version

    # Act: restart on the same directory; a new client continues for 2 rounds.
    second, address = _serve(spawn, tmp_path, "second")
    torch.manual_seed(1)
    newcomer = nn.Linear(20, 5)
    with DiLoCoClient(address, newcomer, inner_steps=1, config=FAST) as client:
        resumed_weights = flat(newcomer)
        applied += scripted_steps(client, newcomer, random_steps(2, size, seed=2))
        assert client.model_version == resumed_version + 2
    second.send_signal(signal.SIGTERM)

    # Assert: resumed at the durable version, rounds applied once, clean drain.
    assert second.wait(timeout=60) == 0
    expected, _ = nesterov_reference(initial, applied[:resumed_version])
    torch.testing.assert_close(resumed_weights, expected)
    final = newest_checkpoint(tmp_path / "ckpt")
    weights, momentum = nesterov_reference(initial, applied)
    assert final.state["model_version"] == resumed_version + 2
    torch.testing.assert_close(final.tensors["master"], weights)
    torch.testing.assert_close(final.tensors["optimizer.momentum_buffer"], momentum)
    events = _events(tmp_path, "second")
    resumed = next(e for e in events if e["event"] == "coordinator_resumed")
    assert (resumed["version"], resumed["round"]) == (resumed_version, resumed_version)
    assert events[-2]["event"] == "checkpoint_written"  # the drain's checkpoint
    assert events[-1]["event"] == "coordinator_stopped"
    run_ids = {e.get("run_id") for e in _events(tmp_path, "first") + events} - {None}
    assert len(run_ids) == 1  # one run across the restart
    if window == "before_replace":
        assert any(e["event"] == "checkpoint_temp_removed" for e in events)
