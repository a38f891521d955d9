"""`fedgrpc serve` on a full disk: no version is served before it is on disk.

A real daemon checkpoints into a tiny tmpfs that the test fills. Before the
fix it logged `checkpoint_failed` and served the unsaved version anyway;
restarted from the previous checkpoint, it then issued the same version
number for other weights. Now a failed write makes it NOT_SERVING (health,
`fedgrpc status`, metrics, logs), holds the version back and applies no
round; once space is freed a retry writes it and it serves again. Every
(version, SHA-256) a client ever pulls, across a SIGKILL and a restart, must
name one set of weights and match the checkpoint on disk.

Mounting needs root (as in CI); elsewhere the test skips, saying so.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedgrpc.client.admin import check_health
from fedgrpc.coordinator.ops.checkpoint_file import (
    checkpoint_name,
    list_rounds,
    read_checkpoint,
)
from tests.conftest import Spawn
from tests.helpers.eventually import eventually
from tests.helpers.raw import (
    Joined,
    Service,
    admin_status,
    join,
    pull,
    stub,
    tiny_spec,
    update_messages,
)
from tests.helpers.serve import log_events, start_serve

FEDGRPC = Path(sys.executable).with_name("fedgrpc")
pytestmark = pytest.mark.system
N = 600
"""Coordinates (2.4 kB): a checkpoint is a few kB, the disk 256 kB."""
CHUNK = 256
WAIT_S = 30.0
"""Bound on waiting for the daemon to notice (it retries every 0.2 s)."""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 kB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def _fill(disk: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete to free)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:  # unbuffered: the write that does not fit fails here
            try:
                os.write(fd, b"\0" * 4096)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return filler
    finally:
        os.close(fd)


class Served:
    """Every (version, SHA-256) clients pulled: one set of weights per version."""

    def __init__(self) -> None:
        self.digests: dict[int, bytes] = {}

    def pull(self, service: Service, client: Joined, version: int) -> np.ndarray:
        got, weights = pull(service, client, min_version=version, timeout=WAIT_S)
        assert got == version
        digest = hashlib.sha256(weights.tobytes()).digest()
        assert self.digests.setdefault(got, digest) == digest, (
            f"version {got} was served with two different sets of weights"
        )
        return weights


def _on_disk(directory: Path, version: int) -> bytes:
    """SHA-256 of the newest checkpoint's weights; it must hold `version`."""
    newest = read_checkpoint(directory / checkpoint_name(list_rounds(directory)[-1]))
    assert newest.state["model_version"] == version
    return hashlib.sha256(newest.tensors["master"].numpy().tobytes()).digest()


def _push_round(service: Service, client: Joined, seed: int) -> int:
    """Push one update to the open round; returns the version it is based on."""
    status = admin_status(client)
    update = np.random.default_rng(seed).standard_normal(N).astype(np.float32)
    messages = update_messages(
        client, update, round_id=status.round_id, base_version=status.model_version,
        chunk_coords=CHUNK,
    )  # fmt: skip
    service.PushUpdate(messages, timeout=WAIT_S)
    return status.model_version


def _serve(
    spawn: Spawn, tmp_path: Path, name: str, ckpt: Path
) -> tuple[subprocess.Popen[str], str]:
    flags = ["--min-clients", "1", "--inner-steps", "1", "--chunk-bytes", "1024",
             "--open-enrollment", "--checkpoint-dir", str(ckpt),
             "--checkpoint-retry-max-s", "0.2",
             "--metrics-listen", "127.0.0.1:0"]  # fmt: skip
    return start_serve(spawn, tmp_path / f"{name}.log", *flags)


def _status_cli(address: str, *flags: str) -> subprocess.CompletedProcess[str]:
    command = [str(FEDGRPC), "status", "--target", address, *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def _serving_metric(log: Path) -> float:
    address = next(e for e in log_events(log) if e["event"] == "metrics_serving")
    with urllib.request.urlopen(
        f"http://{address['address']}/metrics", timeout=10
    ) as r:
        text = r.read().decode()
    line = next(x for x in text.splitlines() if x.startswith("fedgrpc_serving "))
    return float(line.split()[1])


def _expect_not_serving(address: str, log: Path) -> None:
    """Health, `fedgrpc status`, metrics and logs all say NOT_SERVING, and why."""
    eventually(lambda: check_health(address) == "NOT_SERVING", WAIT_S)
    health = _status_cli(address, "--health")
    assert (health.returncode, health.stdout.strip()) == (1, "NOT_SERVING")
    status = json.loads(_status_cli(address, "--json").stdout)
    assert "No space left on device" in status["not_serving_reason"]
    assert "/" not in status["not_serving_reason"]  # no server-side path leaks
    table = _status_cli(address).stdout
    assert "NOT SERVING: checkpoint write failed: No space left on device" in table
    assert _serving_metric(log) == 0
    assert any(e["event"] == "coordinator_not_serving" for e in log_events(log))


def test_a_full_disk_holds_the_new_version_back_until_a_retry_writes_it(
    spawn: Spawn, tmp_path: Path, small_disk: Path
) -> None:
    # Arrange: a daemon checkpointing onto the small disk; round 1 lands.
    ckpt, served = small_disk / "ckpt", Served()
    first, address = _serve(spawn, tmp_path, "first", ckpt)
    log = tmp_path / "first.log"
    channel, service = stub(address)
    with channel:
        client = join(service, tiny_spec(N), "a")
        zeros = np.zeros(N, np.float32)
        seed = update_messages(
            client, zeros, round_id=0, base_version=0, initial=True, chunk_coords=CHUNK
        )
        service.PushUpdate(seed, timeout=WAIT_S)
        served.pull(service, client, 0)
        _push_round(service, client, seed=1)
        served.pull(service, client, 1)
        assert served.digests[1] == _on_disk(ckpt, 1)

        # Act: the disk fills up; round 2's update is taken and the round closes.
        filler = _fill(small_disk)
        assert _push_round(service, client, seed=2) == 1

        # Assert: version 2 exists only in memory, so it is not served.
        _expect_not_serving(address, log)
        with pytest.raises(grpc.RpcError) as waited:
            pull(service, client, min_version=2, timeout=1.5)
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert list_rounds(ckpt)[-1] == 1
        assert admin_status(client).not_serving

        # Act: space comes back; the retry writes version 2 and serving resumes.
        filler.unlink()
        eventually(lambda: check_health(address) == "SERVING", WAIT_S)
        served.pull(service, client, 2)
        assert served.digests[2] == _on_disk(ckpt, 2)
        assert _serving_metric(log) == 1
        assert not admin_status(client).not_serving

        # Act: full again; round 3 is applied in memory, then the daemon dies.
        filler = _fill(small_disk)
        _push_round(service, client, seed=3)
        _expect_not_serving(address, log)
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL
    filler.unlink()

    # Act: restart on the same directory; a new round makes another version 3.
    second, address = _serve(spawn, tmp_path, "second", ckpt)
    channel, service = stub(address)
    with channel:
        client = join(service, tiny_spec(N), "b")
        served.pull(service, client, 2)  # resumed at the last durable version
        assert _push_round(service, client, seed=4) == 2
        served.pull(service, client, 3)  # differs from the lost version 3
        assert served.digests[3] == _on_disk(ckpt, 3)
    second.send_signal(signal.SIGTERM)

    # Assert: one set of weights per version across both processes; clean drain.
    assert second.wait(timeout=60) == 0
    assert sorted(served.digests) == [0, 1, 2, 3]
    events = log_events(tmp_path / "first.log")
    names = [e["event"] for e in events]
    assert names.count("checkpoint_failed") >= 2
    assert "coordinator_serving_again" in names
