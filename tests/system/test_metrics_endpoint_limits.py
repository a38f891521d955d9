"""Half-open scrapes cannot starve the coordinator of file descriptors (issue 13).

A real `fedgrpc serve` with a low descriptor limit (RLIMIT_NOFILE) serves
metrics; raw sockets open connections and send half a request, far more
than the limit allows. A gRPC client must still join, and once the read
timeout closed the half-open connections a scrape must succeed again.
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Spawn
from tests.helpers import eventually
from tests.helpers.raw import join, stub, tiny_spec
from tests.helpers.serve import start_serve

DESCRIPTORS = 256
"""The coordinator's RLIMIT_NOFILE: a Python + gRPC process starts with ~60."""
HALF_OPEN = 400
"""Connections that never finish their request: more than DESCRIPTORS."""


FEW_DESCRIPTORS = (
    sys.executable, "-c",
    "import os, resource, sys; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({DESCRIPTORS}, {DESCRIPTORS})); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)  # fmt: skip
"""Lowers the descriptor limit, then execs the serve command it is given (a
fresh process: no `preexec_fn` running in a fork of the gRPC-threaded test)."""


def _metrics_address(log: Path) -> str:
    """The bound metrics address, from the coordinator's JSON log."""
    for line in log.read_text().splitlines():
        if '"metrics_serving"' in line:
            return str(json.loads(line)["address"])
    raise AssertionError("metrics_serving not logged yet")


@pytest.fixture
def half_open() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for s in sockets:
        s.close()


def _open_half_requests(address: str, sockets: list[socket.socket]) -> None:
    """HALF_OPEN connections, each with a request line and no end of headers.

    Stops early once connects keep timing out: a server that stopped
    accepting (out of descriptors) has been flooded enough.
    """
    host, port = address.rsplit(":", 1)
    timeouts = 0
    for _ in range(HALF_OPEN):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(0.5)
        sockets.append(s)
        try:
            s.connect((host, int(port)))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: coordinator\r\n")
            timeouts = 0
        except TimeoutError:
            timeouts += 1
            if timeouts == 10:
                return
        except OSError:  # refused or reset: the coordinator is shedding them
            continue


def _scrape(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
            return b"fedgrpc_model_version" in reply.read()
    except OSError:
        return False


def test_half_open_metrics_connections_do_not_stop_grpc_clients_from_joining(
    spawn: Spawn, tmp_path: Path, half_open: list[socket.socket]
) -> None:
    log = tmp_path / "serve.log"
    _, address = start_serve(
        spawn, log,
        "--open-enrollment", "--metrics-listen", "127.0.0.1:0",
        "--metrics-read-timeout-s", "2",
        launcher=FEW_DESCRIPTORS,
    )  # fmt: skip
    metrics = eventually(lambda: _metrics_address(log))
    _open_half_requests(metrics, half_open)
    channel, service = stub(address)
    with channel:
        joined = join(service, tiny_spec(), "after-the-flood")
        assert joined.client_id
    # The read timeout closes the half-open ones; scrapes are served again.
    eventually(lambda: _scrape(metrics), 30)
