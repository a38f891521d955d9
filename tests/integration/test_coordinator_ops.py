"""Operating a coordinator: Prometheus metrics over HTTP, `fedgrpc status`, draining.

Real servers on 127.0.0.1 port 0: the metrics endpoint is scraped with
urllib, the status command runs as a subprocess, health is asked through
the standard grpc.health.v1 stub.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.ops.checkpoint_file import list_rounds
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.crypto.files import save_key_pair
from fedgrpc.crypto.keys import PrivateKey
from tests.helpers import eventually
from tests.helpers.metrics import scrape
from tests.helpers.raw import PB, stub
from tests.helpers.scripted import FAST, flat, random_steps, scripted_steps

FEDGRPC = Path(sys.executable).with_name("fedgrpc")


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[CoordinatorThread]:
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        min_clients=1,
        inner_steps=1,
        chunk_bytes=1024,
        open_enrollment=True,
        metrics_listen="127.0.0.1:0",
        checkpoint_dir=str(tmp_path / "ckpt"),
    )
    with serve_in_thread(config) as running:
        yield running


def _train(
    coordinator: CoordinatorThread,
    rounds: int,
    name: str = "worker-a",
    identity_key: str = "",
) -> None:
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    config = dataclasses.replace(FAST, name=name, identity_key=identity_key)
    with DiLoCoClient(coordinator.address, model, inner_steps=1, config=config) as c:
        scripted_steps(c, model, random_steps(rounds, flat(model).numel(), seed=5))


def _scrape(coordinator: CoordinatorThread) -> dict[str, float]:
    return scrape(coordinator)[1]


def _rejections(samples: dict[str, float], code: str) -> float:
    return samples.get(f"fedgrpc_rejections_total{{code={code}}}", 0.0)


def test_metrics_are_scraped_over_http_after_real_rounds(
    coordinator: CoordinatorThread,
) -> None:
    # Arrange: one refused call (unknown client), then two applied rounds.
    before = _scrape(coordinator)
    channel, service = stub(coordinator.address)
    request = PB.PullModelRequest(client_id="nobody", session_token=b"x")
    with channel, pytest.raises(grpc.RpcError) as refused:
        list(service.PullModel(request, timeout=10))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # Act
    _train(coordinator, rounds=2)
    samples = _scrape(coordinator)

    # Assert
    status = coordinator.status()
    assert samples["fedgrpc_rounds_total{outcome=applied}"] == 2
    assert samples["fedgrpc_round_duration_seconds_count"] == 2
    assert samples["fedgrpc_model_version"] == 2
    assert samples["fedgrpc_round"] == 3
    assert samples["fedgrpc_clients_joined"] == 1
    assert samples["fedgrpc_update_bytes_received_total"] == status.bytes_received > 0
    assert samples["fedgrpc_model_bytes_sent_total"] == status.bytes_sent
    assert samples["fedgrpc_checkpoint_write_seconds_count"] == 3  # seed + 2 rounds
    assert samples["fedgrpc_draining"] == 0
    # Goodput: the client reported its training seconds; every round applied.
    applied_s = samples["fedgrpc_compute_applied_seconds_total"]
    assert applied_s == pytest.approx(status.compute_applied_s)
    assert applied_s > 0
    assert samples["fedgrpc_compute_offered_seconds_total"] == pytest.approx(applied_s)
    assert samples["fedgrpc_goodput"] == status.goodput == 1.0
    assert (
        _rejections(samples, "UNAUTHENTICATED")
        == _rejections(before, "UNAUTHENTICATED") + 1
    )


def _run_status(address: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FEDGRPC), "status", "--target", address, *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _key_file(tmp_path: Path, name: str) -> str:
    save_key_pair(PrivateKey.generate(), tmp_path / "keys", name)
    return str(tmp_path / "keys" / f"{name}.key")


def test_status_command_prints_rounds_clients_credit_and_traffic(
    coordinator: CoordinatorThread, tmp_path: Path
) -> None:
    # A persistent key: the client may come back, so its record stays.
    _train(coordinator, rounds=3, name="worker-a",
           identity_key=_key_file(tmp_path, "worker-a"))  # fmt: skip

    table = _run_status(coordinator.address)
    as_json = _run_status(coordinator.address, "--json")
    health = _run_status(coordinator.address, "--health")

    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"coordinator {coordinator.address}  run ")
    assert "round 4 (waiting_for_quorum)  model version 3" in lines[1]  # no one left
    client_row = next(line for line in lines if "worker-a" in line)
    # updates 3: the 3 rounds; the seeding upload is no update; last round 3
    assert client_row.split()[1:6] == ["worker-a", "no", "3", "3", "3"]
    assert sum(line.split()[1:2] == ["applied"] for line in lines) == 3
    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    assert status["model_version"] == 3
    assert status["clients"][0]["samples_contributed"] == 3
    assert status["clients"][0]["updates_accepted"] == 3
    assert [r["round_id"] for r in status["recent_rounds"]] == [1, 2, 3]
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING")


def test_a_client_that_left_with_a_throwaway_key_leaves_the_status_list(
    coordinator: CoordinatorThread, tmp_path: Path
) -> None:
    # Arrange: one client with a persistent key, one with a throwaway key.
    _train(coordinator, rounds=1, name="keeper",
           identity_key=_key_file(tmp_path, "keeper"))  # fmt: skip

    # Act: the throwaway client trains a round, then closes.
    _train(coordinator, rounds=1, name="passer-by")

    # Assert: it is gone from the status list (its key can never come back),
    # the persistent one stays with its credit, and both still count as joined.
    def names() -> list[str]:
        return [c.name for c in coordinator.status().clients]

    eventually(lambda: names() == ["keeper"], timeout_s=10)
    assert [r.num_updates for r in coordinator.status().recent_rounds] == [1, 1]
    assert _scrape(coordinator)["fedgrpc_clients_joined"] == 2


def test_status_of_an_unreachable_coordinator_is_a_clear_error() -> None:
    result = _run_status("127.0.0.1:1", "--timeout-s", "2")
    health = _run_status("127.0.0.1:1", "--health", "--timeout-s", "2")

    assert result.returncode == 2
    assert "no answer from the coordinator at 127.0.0.1:1" in result.stderr
    assert health.returncode == 1  # Docker HEALTHCHECK: 1 is "unhealthy"


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return int(reply.status)


def test_draining_reports_not_serving_finishes_the_apply_then_checkpoints(
    tmp_path: Path,
) -> None:
    # Arrange: a seeded coordinator with a round "being applied": the test holds
    # the numeric lock that an apply (and its checkpoint) holds.
    config = CoordinatorConfig(seed_from_first_client=True,
        listen="127.0.0.1:0", min_clients=1, inner_steps=1, chunk_bytes=1024,
        open_enrollment=True, checkpoint_dir=str(tmp_path),
    )  # fmt: skip
    coordinator = CoordinatorThread(config).start()
    try:
        _train(coordinator, rounds=1)
        runtime = coordinator.running.runtime
        loop = coordinator._loop
        lock = runtime._numeric_lock
        asyncio.run_coroutine_threadsafe(lock.acquire(), loop).result(10)
        address = coordinator.address
        assert _health(address) == health_pb2.HealthCheckResponse.SERVING

        # Act: stop (as on SIGTERM) while the "apply" is still running.
        stopper = threading.Thread(target=coordinator.stop)
        stopper.start()

        # Assert: NOT_SERVING at once, and the drain waits for the apply.
        eventually(
            lambda: _health(address) == health_pb2.HealthCheckResponse.NOT_SERVING,
            timeout_s=10,
        )
        assert stopper.is_alive()
        loop.call_soon_threadsafe(lock.release)
        stopper.join(30)
        assert not stopper.is_alive()
    finally:
        coordinator.stop()
    assert list_rounds(tmp_path)[-1] == 1  # the final checkpoint: after round 1
