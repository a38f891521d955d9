"""The Node.js client (client/node) beside a Python client, against `fedgrpc serve`.

Both clients push known pseudo-gradients; with FedAvg (outer lr 1, no
momentum) every round's new global weights must be the old ones minus the
plain mean of the two updates, and the Node client must pull exactly the
bytes the Python client loads. The coordinator admits only the two clients'
keys, so the Node client's Join proof and update signatures must be
byte-compatible with the Python reference (fedgrpc/crypto/signing.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pytest
import torch
from torch import nn

from fedgrpc import DiLoCoClient
from fedgrpc.config import ClientConfig
from fedgrpc.crypto import PrivateKey, load_public_key, save_key_pair
from tests.conftest import Spawn
from tests.helpers import eventually

REPO = Path(__file__).resolve().parents[2]
FEDGRPC = Path(sys.executable).with_name("fedgrpc")
NODE_CLIENT = REPO / "client/node"
IN, OUT = 40, 20
"""820 float32 parameters: 3,280 bytes, four chunks of at most 1 KiB."""
SPEC = [{"name": "weight", "shape": [OUT, IN]}, {"name": "bias", "shape": [OUT]}]
NODE_DELTA = 0.01
ROUNDS = 2
WAIT_S = 60
pytestmark = pytest.mark.system

# A throwaway key is refused; then, as an allowed client, pushes a NaN
# (chunk 0, validly signed) and a valid update for the open round; prints the
# outcomes. argv: client module, target, spec JSON, base version, key file.
PROBE_JS = """
const fedgrpc = require(process.argv[1]);
const [target, specJson, base, keyPath] = process.argv.slice(2);
(async () => {
  const client = fedgrpc.connect(target);
  const spec = fedgrpc.modelSpec(JSON.parse(specJson));
  const n = fedgrpc.numCoordinates(spec);
  const out = {};
  const timeoutMs = 10000;
  await fedgrpc.join(client, { name: 'stranger', spec, timeoutMs }).catch((err) => {
    out.stranger = err.codeName;
    out.strangerDetails = err.details;
  });
  const identity = fedgrpc.loadIdentity(keyPath);
  // SHA-256 only, as a FIPS-bound client would: its push must count too.
  const hashes = ['HASH_ALGORITHM_SHA256'];
  const fed = await fedgrpc.join(
    client, { name: 'probe', spec, timeoutMs, identity, hashes });
  out.updateHash = fed.updateHash;
  const session = fedgrpc.openSession(client, fed);
  const minVersion = Number(base);
  const model = await fedgrpc.pullModel(client, fed, { minVersion, timeoutMs });
  const opened = await fedgrpc.waitForRound(session, model.modelVersion, timeoutMs);
  const push = (values) => fedgrpc.pushDenseUpdate(client, fed, {
    roundId: opened.round_id, baseVersion: model.modelVersion,
    roundNonce: opened.round_nonce, baseSha256: model.sha256, values, timeoutMs });
  const bad = new Float32Array(n);
  bad[1] = NaN;
  await push(bad).catch((err) => {
    out.code = err.codeName;
    out.details = err.details;
  });
  const ack = await push(new Float32Array(n));
  out.ack = { ...ack, update_sha256: ack.update_sha256.toString('hex') };
  console.log(JSON.stringify(out));
  await session.close('probe done');
  client.close();
})().catch((err) => { console.error(err.message); process.exitCode = 1; });
"""


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with client/node's dependencies installed."""
    executable = shutil.which("node")
    if executable is None or not (NODE_CLIENT / "node_modules/@grpc/grpc-js").is_dir():
        pytest.fail("Node.js client not installed: run `make install` (npm ci)")
    return executable


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """coordinator, python and node key pairs; allowed/ holds the clients' .pub."""
    directory = tmp_path / "keys"
    for name in ("coordinator", "python", "node"):
        save_key_pair(PrivateKey.generate(), directory, name)
    allowed = directory / "allowed"
    allowed.mkdir()
    for name in ("python", "node"):
        (allowed / f"{name}.pub").write_bytes((directory / f"{name}.pub").read_bytes())
    return directory


@pytest.fixture
def coordinator(spawn: Spawn, tmp_path: Path, keys: Path) -> Iterator[str]:
    """`fedgrpc serve` for two FedAvg clients; its log is printed at teardown."""
    ready, log_path = tmp_path / "ready", tmp_path / "coordinator.log"
    with log_path.open("w") as log:
        process = spawn(
            [
                str(FEDGRPC), "serve", "--listen", "127.0.0.1:0",
                "--ready-file", str(ready), "--min-clients", "2",
                "--inner-steps", "1", "--outer-optimizer", "fedavg",
                "--chunk-bytes", "1024", "--round-timeout-s", str(WAIT_S),
                "--heartbeat-interval-s", "0.5", "--session-timeout-s", "2",
                "--identity-key", str(keys / "coordinator.key"),
                "--allowed-client-keys", str(keys / "allowed"),
                "--seed-from-first-client",  # the Python client seeds
            ],
            stderr=log,
        )  # fmt: skip
    try:
        eventually(lambda: ready.exists() or process.poll() is not None, timeout_s=30)
        assert process.poll() is None, "fedgrpc serve exited"
        yield ready.read_text().strip()
    finally:
        print(log_path.read_text())  # pytest shows it when the test failed


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _sha256(weights: torch.Tensor) -> str:
    return hashlib.sha256(weights.numpy().astype("<f4").tobytes()).hexdigest()


def _blake3(weights: torch.Tensor) -> str:
    return blake3.blake3(weights.numpy().astype("<f4").tobytes()).hexdigest()


def _node_delta(k: int, n: int) -> torch.Tensor:
    """What example.js sends in round k: delta * k * ((i % 7) - 3), as float32."""
    i = np.arange(n)
    return torch.from_numpy((NODE_DELTA * k * ((i % 7) - 3)).astype(np.float32))


def _python_delta(k: int, n: int) -> torch.Tensor:
    i = torch.arange(n)
    return (0.02 * k * ((i % 5) - 2)).float()


def _run_python_rounds(
    client: DiLoCoClient, model: nn.Linear, node: subprocess.Popen[str]
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(global before, update sent, global after) for each round."""
    trace = []
    n = sum(p.numel() for p in model.parameters())
    # Node waits in round 1 for longer than the 2 s session timeout: on its
    # own 5 s heartbeat it would be evicted, on the announced 0.5 s it stays.
    time.sleep(4.0)
    for k in range(1, ROUNDS + 1):
        before = _flat(model)
        with torch.no_grad():  # local weights := global - delta, so we send ~delta
            local = before - _python_delta(k, n)
            model.weight.copy_(local[: OUT * IN].view(OUT, IN))
            model.bias.copy_(local[OUT * IN :])
        sent = before - _flat(model)  # the pseudo-gradient as the client computes it
        try:
            assert client.step(num_samples=1)
        except Exception as exc:
            output = node.communicate(timeout=10) if node.poll() is not None else ""
            raise AssertionError(f"round {k} failed; node client: {output}") from exc
        trace.append((before, sent, _flat(model)))
    return trace


def _probe_bad_push(node: str, address: str, base: int, key: Path) -> Any:
    result = subprocess.run(
        [node, "-e", PROBE_JS, str(NODE_CLIENT / "fedgrpc_client.js"),
         address, json.dumps(SPEC), str(base), str(key)],
        capture_output=True, text=True, timeout=WAIT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("node_flags", "node_hash"),
    [((), "blake3"), (("--sha256-only",), "sha256")],
    ids=["blake3", "sha256-only node"],
)
def test_node_and_python_clients_average_to_the_mean_of_both_updates(
    spawn: Spawn,
    coordinator: str,
    node: str,
    keys: Path,
    node_flags: tuple[str, ...],
    node_hash: str,
) -> None:
    # Arrange: the Python client joins first and seeds the model (version 0).
    address = coordinator
    torch.manual_seed(0)
    model = nn.Linear(IN, OUT)
    pin = str(keys / "coordinator.pub")
    config = ClientConfig(
        name="python", rpc_timeout_s=10, round_wait_s=WAIT_S, connect_timeout_s=10,
        identity_key=str(keys / "python.key"), coordinator_key=pin,
    )  # fmt: skip
    coordinator_fp = load_public_key(pin).fingerprint
    with DiLoCoClient(address, model, config=config) as client:
        seeded = _flat(model)
        node_client = spawn(
            [node, str(NODE_CLIENT / "example.js"), "--target", address,
             "--rounds", str(ROUNDS), "--delta", str(NODE_DELTA),
             "--spec", json.dumps(SPEC), "--timeout-s", str(WAIT_S),
             "--identity-key", str(keys / "node.key"),
             "--coordinator-key", coordinator_fp, *node_flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

        # Act: two rounds side by side, then a malformed push from Node.
        trace = _run_python_rounds(client, model, node_client)
        python_base = client._sync.base_sha256.hex()
        out, err = node_client.communicate(timeout=WAIT_S)
        probe = _probe_bad_push(node, address, base=ROUNDS, key=keys / "node.key")

    # Assert: each new global = old - mean(python update, node update).
    assert node_client.returncode == 0, err
    n = seeded.numel()
    for k, (before, sent, after) in enumerate(trace, start=1):
        expected = before - (sent + _node_delta(k, n)) / 2
        torch.testing.assert_close(after, expected, rtol=0, atol=1e-6)
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in events] == [
        "joined", "pulled",
        "pushed", "round_closed", "pulled",
        "pushed", "round_closed", "pulled",
        "done",
    ]  # fmt: skip
    joined = events[0]
    assert joined["seed_model"] is False
    assert joined["signed"] is True
    assert joined["update_hash"] == f"HASH_ALGORITHM_{node_hash.upper()}"
    assert joined["key_sha256"] == load_public_key(keys / "node.pub").fingerprint
    assert joined["coordinator_key_sha256"] == coordinator_fp
    assert joined["codec"] == "CODEC_DENSE_FP32"
    assert joined["outer_optimizer"] == "OUTER_OPTIMIZER_FEDAVG"
    assert joined["coords_per_chunk"] == 256
    pushed = [e for e in events if e["event"] == "pushed"]
    assert [(e["round_id"], e["base_version"]) for e in pushed] == [(1, 0), (2, 1)]
    assert all(e["chunks"] == 4 and e["bytes"] == n * 4 for e in pushed)
    assert all(len(e["update_sha256"]) == 64 for e in pushed)  # verified chains
    closed = [e for e in events if e["event"] == "round_closed"]
    assert all(e["outcome"] == "applied" and e["num_updates"] == 2 for e in closed)
    # Node pulled byte for byte what the Python client loaded, every version.
    pulled = [e for e in events if e["event"] == "pulled"]
    assert [e["model_version"] for e in pulled] == [0, 1, 2]
    assert [e["weights_sha256"] for e in pulled] == [
        _sha256(w) for w in (seeded, trace[0][2], trace[1][2])
    ]
    # Its models came with digests under the hash it negotiated (BLAKE3,
    # serve's default, or SHA-256 when it offered only that), checked
    # against the bytes before it pushed from them; the Python client, in
    # the same rounds, got BLAKE3 digests.
    digest = _blake3 if node_hash == "blake3" else _sha256
    assert [e["weights_hash"] for e in pulled] == [node_hash] * 3
    assert [e["weights_digest"] for e in pulled] == [
        digest(w) for w in (seeded, trace[0][2], trace[1][2])
    ]
    assert python_base == _blake3(trace[1][2])
    # An unknown key is UNAUTHENTICATED; a (signed) NaN is INVALID_ARGUMENT,
    # and the round still takes the next push.
    assert probe["stranger"] == "UNAUTHENTICATED"
    assert "not allowed to join" in probe["strangerDetails"]
    assert probe["code"] == "INVALID_ARGUMENT"
    assert "contains NaN or Inf" in probe["details"]
    assert probe["ack"]["updates_in_round"] == 1
    assert probe["updateHash"] == "HASH_ALGORITHM_SHA256"  # what it offered
