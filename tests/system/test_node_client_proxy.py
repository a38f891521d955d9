"""The Node.js client (client/node) behind an HTTP CONNECT proxy.

@grpc/grpc-js reads the proxy from the environment only (`grpc_proxy`, else
`https_proxy`, else `http_proxy`; `no_grpc_proxy`, else `no_proxy`, exempts
hosts); it has no `grpc.http_proxy` channel option. This checks that the
Node client's Join really goes through the proxy named in `https_proxy`,
and what a refusing proxy looks like to it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import pytest

import fedgrpc
from fedgrpc.config import CoordinatorConfig
from tests.helpers.connect_proxy import connect_proxy

REPO = Path(__file__).resolve().parents[2]
NODE_CLIENT = REPO / "client/node"
SPEC = [{"name": "weight", "shape": [2, 4]}, {"name": "bias", "shape": [2]}]
PROXY_VARIABLES = (
    "grpc_proxy", "https_proxy", "http_proxy", "no_grpc_proxy", "no_proxy",
    "GRPC_PROXY", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY",
)  # fmt: skip
pytestmark = pytest.mark.system

# Join with a throwaway key and print the outcome as one JSON line.
# argv: client module, target, spec JSON.
JOIN_JS = """
const fedgrpc = require(process.argv[1]);
const [target, specJson] = process.argv.slice(2);
(async () => {
  const client = fedgrpc.connect(target);
  const spec = fedgrpc.modelSpec(JSON.parse(specJson));
  try {
    const options = { name: 'node-proxy', spec, timeoutMs: 10000 };
    const fed = await fedgrpc.join(client, options);
    console.log(JSON.stringify({ joined: fed.clientId !== undefined }));
  } catch (err) {
    console.log(JSON.stringify({ code: err.codeName, details: err.details }));
  } finally {
    client.close();
  }
})();
"""


@pytest.fixture
def node() -> str:
    executable = shutil.which("node")
    if executable is None or not (NODE_CLIENT / "node_modules/@grpc/grpc-js").is_dir():
        pytest.fail("Node.js client not installed: run `make install` (npm ci)")
    return executable


@pytest.fixture
def coordinator() -> Iterator[fedgrpc.Coordinator]:
    config = CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, min_clients=1,
        inner_steps=1, seed_from_first_client=True,
    )  # fmt: skip
    with fedgrpc.Coordinator(config) as running:
        yield running


def _join(node: str, target: str, proxy_url: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
    env["https_proxy"] = proxy_url
    done = subprocess.run(
        [node, "-e", JOIN_JS, str(NODE_CLIENT / "fedgrpc_client.js"), target,
         json.dumps(SPEC)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_node_client_joins_through_https_proxy(
    node: str, coordinator: fedgrpc.Coordinator
) -> None:
    with connect_proxy() as proxy:
        result = _join(node, coordinator.address, proxy.url)
    port = coordinator.address.rsplit(":", 1)[1]
    assert result == {"joined": True}
    assert set(proxy.connects) == {f"CONNECT 127.0.0.1:{port}"}
    assert coordinator.status().clients[0].name == "node-proxy"


def test_node_client_behind_a_refusing_proxy_gets_unavailable(
    node: str, coordinator: fedgrpc.Coordinator
) -> None:
    with connect_proxy(refuse=HTTPStatus.FORBIDDEN) as proxy:
        result = _join(node, coordinator.address, proxy.url)
    assert proxy.connects, "the Node client bypassed the proxy"
    assert result["code"] == "UNAVAILABLE", result
    assert len(coordinator.status().clients) == 0
