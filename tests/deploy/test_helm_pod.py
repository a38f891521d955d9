"""server/helm/fedgrpc's pod against the coordinator it runs.

The ConfigMap's TOML goes through fedgrpc's own config loader (with the
files the pod would mount), and the probes, Service ports, mounts and
security settings are checked against what that TOML makes the
coordinator listen on and write to, and against the image server/Dockerfile
builds. tests/deploy/test_helm_serve.py runs the TOML for real.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import pytest

from fedgrpc.cli import build_parser
from fedgrpc.config import CoordinatorConfig, load_table
from tests.helpers.helm_chart import (
    FULL_VALUES,
    REPO,
    Object,
    Rendered,
    render,
    secret_files,
)


def _write_toml(rendered: Rendered, tmp_path: Path) -> Path:
    path = tmp_path / "coordinator.toml"
    path.write_text(rendered.toml)
    return path


def test_default_toml_is_accepted_by_the_config_loader(tmp_path: Path) -> None:
    rendered = render()
    config = CoordinatorConfig.from_toml(_write_toml(rendered, tmp_path))

    assert config.listen == "0.0.0.0:7070"
    assert config.metrics_listen == "0.0.0.0:9464"
    assert config.http_listen == ""
    assert config.checkpoint_dir == "/var/lib/fedgrpc/checkpoints"
    assert config.spool_dir == "/tmp/fedgrpc-spool"
    assert config.open_enrollment
    assert config.seed_from_first_client
    assert (config.min_clients, config.inner_steps) == (2, 500)
    assert config.round_timeout_s == 600.0
    assert config.checkpoint_keep == 3
    assert config.log_format == "json"


def test_coordinator_values_reach_the_toml_with_their_types(tmp_path: Path) -> None:
    rendered = render(
        {
            "coordinator": {
                "config": {
                    "min_clients": 3,
                    "outer_optimizer": "fedavgm",
                    "outer_lr": 0.5,
                    "max_samples_per_update": 1_000_000_000,
                    "dp_delta": 0.00001,
                    "reflection": True,
                    "codec": "topk:0.01:int8",
                },
                "extraToml": "aggregator_params = { beta = 0.2 }",
            }
        }
    )
    path = _write_toml(rendered, tmp_path)
    assert load_table(path, "coordinator", CoordinatorConfig)["aggregator_params"] == (
        {"beta": 0.2}
    )
    table = rendered.table
    del table["aggregator_params"]  # only a package.module:Class takes any
    config = CoordinatorConfig(**table)

    assert config.min_clients == 3
    assert config.outer_optimizer == "fedavgm"
    assert config.outer_lr == 0.5
    # Helm reads YAML numbers as float64; a whole one must stay an integer.
    assert table["max_samples_per_update"] == 1_000_000_000
    assert isinstance(table["max_samples_per_update"], int)
    assert config.dp_delta == pytest.approx(1e-5)
    assert config.reflection is True
    assert config.codec == "topk:0.01:int8"


def test_tls_toml_is_accepted_with_the_files_the_pod_mounts(tmp_path: Path) -> None:
    rendered = render(FULL_VALUES)
    secrets = secret_files(tmp_path)
    table = rendered.table

    # Every file setting names a key of a Secret mounted at its directory.
    local: dict[str, str] = {}
    for option in ("tls_cert", "tls_key", "tls_client_ca", "identity_key",
                   "admin_token_file", "allowed_client_keys"):  # fmt: skip
        mount, volume = rendered.mount_of(table[option])
        assert volume["readOnly"] is True, option
        secret = secrets[volume["secret"]["secretName"]]
        relative = PurePosixPath(table[option]).relative_to(mount)
        if str(relative) == ".":  # the allowed_client_keys directory
            local[option] = str(next(iter(secret.values())).parent)
        else:
            local[option] = str(secret[str(relative)])
    assert table["init_model"] == "/models/init.safetensors"
    assert rendered.mount_of(table["init_model"])[0] == "/models"

    config = CoordinatorConfig(**{**table, **local, "init_model": ""})
    assert config.tls_cert.endswith("server.pem")
    assert config.tls_client_ca.endswith("ca.pem")
    assert not config.open_enrollment
    assert not config.seed_from_first_client
    assert config.http_listen == "0.0.0.0:8080"


def _listen_port(table: Object, option: str) -> int:
    return int(str(table[option]).rsplit(":", 1)[1])


def test_grpc_probes_ask_the_port_the_coordinator_listens_on() -> None:
    rendered = render()
    table = rendered.table
    grpc_port = _listen_port(table, "listen")

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        action = rendered.container[probe]
        assert set(action) & {"grpc", "httpGet", "tcpSocket"} == {"grpc"}, probe
        assert action["grpc"]["port"] == grpc_port
    assert rendered.port_number("grpc") == grpc_port
    service = rendered.one("Service", "fl-fedgrpc")
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert rendered.port_number(by_name["grpc"]["targetPort"]) == grpc_port
    assert rendered.port_number(by_name["metrics"]["targetPort"]) == _listen_port(
        table, "metrics_listen"
    )


def test_http_probes_ask_healthz_on_the_dashboard_port() -> None:
    rendered = render(FULL_VALUES)
    table = rendered.table
    http_port = _listen_port(table, "http_listen")

    paths = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = rendered.container[probe]["httpGet"]
        assert rendered.port_number(get["port"]) == http_port, probe
        paths[probe] = get["path"]
    # Not /readyz for readiness: it is 503 until the first client joins a
    # fresh run (tests/deploy/test_helm_serve.py), and that client comes in
    # through the Service a not-ready pod is not part of.
    assert set(paths.values()) == {"/healthz"}


def test_service_monitor_scrapes_the_metrics_port_of_the_service() -> None:
    rendered = render(FULL_VALUES)
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service", "fl-fedgrpc")
    labels = service["metadata"]["labels"]

    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["training"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    headless = rendered.one("Service", "fl-fedgrpc-headless")
    # Only one Service carries the metrics port, so each pod is scraped once.
    assert "metrics" not in {p["name"] for p in headless["spec"]["ports"]}


def test_checkpoints_and_spool_are_on_writable_volumes_of_a_locked_down_pod() -> None:
    rendered = render()
    table = rendered.table
    statefulset = rendered.one("StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]

    mount, volume = rendered.mount_of(table["checkpoint_dir"])
    assert "spec" in volume, "checkpoints must be on the volumeClaimTemplate"
    assert volume["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert not volume.get("readOnly", False)
    _, scratch = rendered.mount_of(table["spool_dir"])
    assert "emptyDir" in scratch
    assert rendered.container["securityContext"]["readOnlyRootFilesystem"] is True
    assert rendered.container["securityContext"]["allowPrivilegeEscalation"] is False
    assert rendered.container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert statefulset["spec"]["replicas"] == 1
    assert statefulset["spec"]["serviceName"] == "fl-fedgrpc-headless"
    assert mount == "/var/lib/fedgrpc"


def test_without_persistence_checkpoints_live_in_an_empty_dir() -> None:
    rendered = render({"persistence": {"enabled": False}})
    table = rendered.table
    _, volume = rendered.mount_of(table["checkpoint_dir"])
    assert "emptyDir" in volume
    assert "volumeClaimTemplates" not in rendered.one("StatefulSet")["spec"]
    assert "checkpoints die with the pod" in rendered.notes


def _dockerfile_text() -> str:
    lines = (REPO / "server/Dockerfile").read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def test_pod_runs_the_image_as_it_was_built() -> None:
    # The chart passes only args: the image's ENTRYPOINT must be fedgrpc,
    # and the pod's uid the one the image made its state directory for.
    dockerfile = _dockerfile_text()
    rendered = render()
    pod = rendered.one("StatefulSet")["spec"]["template"]["spec"]

    entrypoint = re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.MULTILINE)
    assert entrypoint is not None
    args = build_parser().parse_args(rendered.container["args"])
    assert json.loads(entrypoint.group(1)) == ["fedgrpc"]
    assert args.command == "serve"
    assert args.config == "/etc/fedgrpc/config/coordinator.toml"
    assert rendered.mount_of(args.config)[1]["configMap"]["name"] == "fl-fedgrpc"
    uid = re.search(r"useradd [^\n]*--uid (\d+)", dockerfile)
    assert uid is not None
    assert pod["securityContext"]["runAsUser"] == int(uid.group(1))
    assert pod["securityContext"]["fsGroup"] == int(uid.group(1))
    exposed = re.search(r"^EXPOSE (.+)$", dockerfile, re.MULTILINE)
    assert exposed is not None
    container_ports = {p["containerPort"] for p in rendered.container["ports"]}
    assert {int(p) for p in exposed.group(1).split()} == container_ports
