"""The chart's pod, minus Kubernetes: `fedgrpc serve` on the rendered TOML.

The pod's file system is laid out under a scratch directory exactly as the
StatefulSet mounts it (each Secret's keys as files under its mountPath, the
checkpoint claim and the scratch emptyDir as empty directories, the model
volume holding init_model), the TOML's paths are re-rooted there, and a
real `fedgrpc serve --config` runs it with TLS, client certificates, an
allowed client key and the coordinator's identity. Only the ports move
(free ports on 127.0.0.1 instead of 0.0.0.0's fixed ones). Then what the
probes and a client would do: /healthz and /readyz answer 200, gRPC health
says SERVING, /metrics serves, and a client with the allowed key and a
client certificate pins the coordinator's key and gets a round applied,
checkpointed on the claim's directory.
"""

from __future__ import annotations

import re
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.client.admin import check_health
from fedgrpc.config import ClientConfig
from tests.conftest import Spawn
from tests.helpers import eventually
from tests.helpers.helm_chart import FULL_VALUES, Rendered, render, secret_files
from tests.helpers.serve import start_serve

pytestmark = pytest.mark.system
H = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _lay_out_pod(rendered: Rendered, root: Path, tmp_path: Path) -> None:
    """Create every volumeMount of the container under `root`, filled."""
    pod = rendered.one("StatefulSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    secrets = secret_files(tmp_path)
    for mount in rendered.container["volumeMounts"]:
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        secret = volumes.get(mount["name"], {}).get("secret") or {}
        for key, source in secrets.get(secret.get("secretName", ""), {}).items():
            shutil.copy(source, target / key)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    weights = {n: p.detach() for n, p in model.named_parameters()}
    save_file(weights, str(root / "models/init.safetensors"))


def _config_file(rendered: Rendered, root: Path, ports: dict[int, int]) -> Path:
    mounts = [m["mountPath"] for m in rendered.container["volumeMounts"]]

    def re_root(found: re.Match[str]) -> str:
        path = PurePosixPath(found.group(1))
        on_volume = any(path.is_relative_to(mount) for mount in mounts)
        return f'"{root}{path}"' if on_volume else found.group(0)

    # Every absolute path string in the TOML, in one pass (root is under /tmp,
    # itself a mount: replacing mount by mount would re-root twice).
    text = re.sub(r'"(/[^"]*)"', re_root, rendered.toml)
    for container_port, port in ports.items():
        text = text.replace(f'"0.0.0.0:{container_port}"', f'"127.0.0.1:{port}"')
    config = root / "etc/fedgrpc/config/coordinator.toml"
    config.write_text(text)
    return config


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def test_serve_runs_the_rendered_toml_with_the_mounted_secrets(
    spawn: Spawn, tmp_path: Path
) -> None:
    values = {**FULL_VALUES, "coordinator": {"config": {"min_clients": 1,
                                                        "inner_steps": H}}}  # fmt: skip
    rendered = render(values)
    root = tmp_path / "pod"
    _lay_out_pod(rendered, root, tmp_path)
    metrics_port, http_port = _free_port(), _free_port()
    config = _config_file(rendered, root, {9464: metrics_port, 8080: http_port})

    _, address = start_serve(
        spawn, tmp_path / "serve.log", "--config", str(config),
        "--init-model", str(root / "models/init.safetensors"),
    )  # fmt: skip

    # What kubelet's probes (which retry) and Prometheus would see. /readyz
    # says no until the first client joins, even with init_model: why the
    # chart's readiness probe asks /healthz (or gRPC health) instead.
    healthz = f"http://127.0.0.1:{http_port}/healthz"
    eventually(lambda: _get(healthz)[0] == 200, timeout_s=30, message=healthz)
    readyz = f"http://127.0.0.1:{http_port}/readyz"
    assert _get(readyz) == (503, b"no model yet: waiting for the initial weights\n")
    status, metrics = _get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert status == 200
    assert b"fedgrpc_serving 1.0" in metrics

    pki, keys = tmp_path / "pki", tmp_path / "keys"
    client_config = ClientConfig(
        tls_ca=str(pki / "ca.pem"), tls_cert=str(pki / "client.pem"),
        tls_key=str(pki / "client.key"), identity_key=str(keys / "alice.key"),
        coordinator_key=str(keys / "coordinator.pub"),
        rpc_timeout_s=10, round_wait_s=60, connect_timeout_s=20,
    )  # fmt: skip
    assert check_health(address, client_config) == "SERVING"
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with DiLoCoClient(address, model, inner_steps=H, config=client_config) as client:
        synced = False
        while not synced:
            x = torch.randn(8, 4)
            loss = (model(x) - x[:, :2]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            synced = bool(client.step(loss, num_samples=8))
        assert client.last_round_outcome == "applied"
    assert _get(readyz)[0] == 200

    checkpoints = root / "var/lib/fedgrpc/checkpoints"
    eventually(lambda: list(checkpoints.glob("round-1*.ckpt")), timeout_s=30)
