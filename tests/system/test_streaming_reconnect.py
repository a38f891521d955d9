"""A streaming client rides out a coordinator SIGKILL and restart.

`fedgrpc serve --round-mode streaming` runs as a subprocess and is
SIGKILLed; a fragment may be in flight on the client's worker thread at
that moment. The training loop keeps calling `step()`: nothing raises, the
client re-joins once the coordinator is back (pulling the whole model,
which rebases every fragment), and fragment rounds continue from the
checkpointed version, with every fragment's optimizer state.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.client.admin import fetch_status
from fedgrpc.config import ClientConfig
from fedgrpc.coordinator.ops.model_export import newest_checkpoint
from fedgrpc.crypto.files import save_key_pair
from fedgrpc.crypto.keys import PrivateKey
from tests.conftest import Spawn
from tests.helpers.serve import log_events, start_serve

pytestmark = pytest.mark.system
WAIT_S = 60.0


def _serve(
    spawn: Spawn, tmp_path: Path, name: str, listen: str
) -> tuple[subprocess.Popen[Any], str]:
    flags = ["--min-clients", "1", "--inner-steps", "4", "--chunk-bytes", "1024",
             "--round-mode", "streaming", "--fragments", "2",
             "--streaming-overlap-steps", "1", "--open-enrollment",
             "--identity-key", str(tmp_path / "coordinator.key"),
             "--checkpoint-dir", str(tmp_path / "ckpt")]  # fmt: skip
    return start_serve(
        spawn, tmp_path / f"{name}.log", *flags, listen=listen, timeout_s=WAIT_S
    )


def _train(client: DiLoCoClient, model: nn.Linear, syncs: int) -> list[str]:
    """Steps until `syncs` calls ran a sync point or a merge; their outcomes."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    outcomes: list[str] = []
    for _ in range(200 * syncs):
        inputs = torch.randn(16, 8)
        loss = nn.functional.mse_loss(model(inputs), inputs.sum(1, keepdim=True))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if client.step(loss=loss.item(), num_samples=16):
            outcomes.append(str(client.last_round_outcome))
            if len(outcomes) == syncs:
                return outcomes
    raise AssertionError(f"only {outcomes}")


def test_a_streaming_client_rides_out_a_coordinator_sigkill(
    spawn: Spawn, tmp_path: Path
) -> None:
    save_key_pair(PrivateKey.generate(), tmp_path, "coordinator")
    save_key_pair(PrivateKey.generate(), tmp_path, "worker")
    first, address = _serve(spawn, tmp_path, "first", "127.0.0.1:0")
    config = ClientConfig(
        rpc_timeout_s=10, round_wait_s=30, connect_timeout_s=20,
        reconnect_initial_s=0.1, reconnect_max_s=1.0, reconnect_give_up_s=120,
        identity_key=str(tmp_path / "worker.key"),
    )  # fmt: skip
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    with DiLoCoClient(address, model, config=config) as client:
        before = _train(client, model, 8)  # 4 fragments sent, 4 merged
        assert before == ["in_flight", "applied"] * 4
        version_before = client.model_version
        assert version_before == 4
        # One more fragment leaves; the coordinator dies while it is in flight
        # or just after: either way the loop must not see an exception.
        assert _train(client, model, 1) == ["in_flight"]
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=WAIT_S) == -signal.SIGKILL
        durable = newest_checkpoint(tmp_path / "ckpt")
        assert durable.state["model_version"] in (version_before, version_before + 1)

        offline = _train(client, model, 2)
        second, _ = _serve(spawn, tmp_path, "second", address)
        deadline = time.monotonic() + WAIT_S
        after: list[str] = []
        while client.model_version < version_before + 4:
            assert time.monotonic() < deadline, (offline, after)
            after += _train(client, model, 1)

        assert set(offline) <= {"offline", "applied", "stale"}
        assert "applied" in after
        assert fetch_status(address).pacing.round_mode == "streaming"
        final = client.global_state_dict()
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=WAIT_S) == 0
    events = log_events(tmp_path / "second.log")
    resumed = next(e for e in events if e["event"] == "coordinator_resumed")
    assert resumed["version"] == durable.state["model_version"]
    assert torch.isfinite(final["weight"]).all()
