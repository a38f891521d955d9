"""Start `fedgrpc serve` as a real process, the way an operator would.

One place for what every system test needs: bind 127.0.0.1 port 0 (or a
given address, to restart on the same one), wait for the ready-file with a
bound, fail with the coordinator's own log if it exited instead, and log
to a file rather than a pipe (a pipe nobody reads fills up and blocks a
long-running coordinator's logging).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from fedgrpc._proto.v1 import admin_pb2, admin_pb2_grpc
from tests.conftest import Spawn
from tests.helpers.eventually import eventually

FEDGRPC = Path(sys.executable).with_name("fedgrpc")
ROOT = Path(__file__).resolve().parents[2]


def start_serve(
    spawn: Spawn,
    log: Path,
    *flags: str,
    listen: str = "127.0.0.1:0",
    crash_at: str = "",
    timeout_s: float = 60.0,
    launcher: Sequence[str] = (),
    **popen: Any,
) -> tuple[subprocess.Popen[Any], str]:
    """`fedgrpc serve --listen LISTEN ... FLAGS`; (process, bound host:port).

    Logs (JSON lines) go to `log`; the ready-file sits beside it. Without
    `--init-model` among `flags`, the first client to join seeds the model
    (`--seed-from-first-client`).
    `crash_at` (`STAGE:ROUND`) runs the same serve through the fault-hook
    launcher (`tests.helpers.faults`), which SIGKILLs it at that checkpoint stage.
    `launcher`: a command line the serve command is handed to (it execs it),
    say to lower a resource limit first: a `preexec_fn` would run Python
    between fork and exec in a test process whose gRPC threads are live,
    which crashed the child ("epoll_wait error: Bad file descriptor").
    `popen`: more `subprocess.Popen` arguments.
    """
    ready = log.with_suffix(".addr")
    env = dict(os.environ)
    command = [str(FEDGRPC)]
    if crash_at:
        path = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONPATH"] = path
        command = [sys.executable, "-m", "tests.helpers.faults", "--crash-at", crash_at]
    argv = [
        *launcher,
        *command,
        "serve",
        "--listen",
        listen,
        "--ready-file",
        str(ready),
    ]
    if "--init-model" not in flags:
        # The test clients join as a first try would and the first one seeds
        # the model: the explicit opt-in `serve` needs for that.
        argv.append("--seed-from-first-client")
    with log.open("w") as stderr:  # the child keeps its own copy
        process = spawn([*argv, *flags], stderr=stderr, env=env, text=True, **popen)
    eventually(lambda: ready.exists() or process.poll() is not None, timeout_s)
    assert process.poll() is None, log.read_text()
    return process, ready.read_text().strip()


def log_events(log: Path) -> list[dict[str, Any]]:
    """The JSON log lines `start_serve` wrote to `log`, in order."""
    lines = log.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def status_at(address: str) -> admin_pb2.GetStatusResponse:
    """AdminService.GetStatus of the coordinator at `address` (10 s bound)."""
    with grpc.insecure_channel(address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=10)
