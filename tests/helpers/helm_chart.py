"""Render server/helm/fedgrpc as `helm template` would, and look things up in it.

Rendering uses Helm's own Go engine (the `helm-python-sdk` wheel binds it),
so the templates, `fail` messages and values.schema.json behave exactly as
in `helm install`; no cluster is contacted.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import helm_python as helm
import yaml

from fedgrpc.crypto import PrivateKey, save_key_pair
from fedgrpc.crypto.certs import write_dev_pki

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "server/helm/fedgrpc"
RELEASE = "fl"
NAMESPACE = "training"

Object = dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    """The Kubernetes objects of one render, and its NOTES.txt."""

    objects: list[Object]
    notes: str

    def one(self, kind: str, name: str | None = None) -> Object:
        found = [
            o
            for o in self.objects
            if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
        ]
        assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
        return found[0]

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)

    @property
    def container(self) -> Object:
        pod = self.one("StatefulSet")["spec"]["template"]["spec"]
        containers: list[Object] = pod["containers"]
        assert len(containers) == 1
        return containers[0]

    @property
    def toml(self) -> str:
        return str(self.one("ConfigMap")["data"]["coordinator.toml"])

    @property
    def table(self) -> Object:
        """The ConfigMap's [coordinator] table, parsed."""
        table: Object = tomllib.loads(self.toml)["coordinator"]
        return table

    def mounts(self) -> dict[str, Object]:
        """mountPath -> its volumeMount merged with the volume behind it (a
        Secret, ConfigMap, emptyDir, or a volumeClaimTemplate's spec)."""
        statefulset = self.one("StatefulSet")["spec"]
        volumes = {v["name"]: v for v in statefulset["template"]["spec"]["volumes"]}
        claims = {
            t["metadata"]["name"]: t
            for t in statefulset.get("volumeClaimTemplates", [])
        }
        return {
            m["mountPath"]: {**volumes.get(m["name"], claims.get(m["name"], {})), **m}
            for m in self.container["volumeMounts"]
        }

    def mount_of(self, path: str) -> tuple[str, Object]:
        """The mount `path` lies on, and its volume; fails if on none."""
        for mount, volume in self.mounts().items():
            if PurePosixPath(path).is_relative_to(mount):
                return mount, volume
        raise AssertionError(f"{path} is on no volume of the pod")

    def port_number(self, name_or_number: str | int) -> int:
        """A probe's or Service's port (a number, or a container port's name)."""
        if isinstance(name_or_number, int):
            return name_or_number
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        return int(ports[name_or_number])


def render(values: Object | None = None) -> Rendered:
    """The chart rendered with `values` over its defaults (schema-checked)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    objects: list[Object] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(objects, notes)


def lint(values: Object | None = None) -> dict[str, Any]:
    """`helm lint --strict` of the chart with `values`."""
    return helm.lint(CHART, values or {}, strict=True)


FULL_VALUES: Object = {
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "http": {"enabled": True},
    "probes": {"type": "http"},
    "initModel": {"path": "/models/init.safetensors"},
    "tls": {
        "enabled": True,
        "secretName": "fedgrpc-tls",
        "clientCA": {"enabled": True, "secretName": "fedgrpc-client-ca"},
    },
    "adminToken": {"secretName": "fedgrpc-admin"},
    "identity": {"secretName": "fedgrpc-identity"},
    "clientKeys": {"secretName": "fedgrpc-clients"},
    "extraVolumes": [
        {"name": "models", "persistentVolumeClaim": {"claimName": "models"}}
    ],
    "extraVolumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
}
"""Monitoring, TLS with client certificates, the dashboard with HTTP probes,
and every Secret the chart can mount: what a production release sets."""


def secret_files(directory: Path) -> dict[str, dict[str, Path]]:
    """Secret name -> {key: local file}: what FULL_VALUES' Secrets would hold.

    Real files made the way an operator would (`fedgrpc certs --admin`,
    `fedgrpc keygen`): a development CA with the server, client and admin
    certificates and the admin token; the coordinator's key; one client's
    public key ("alice", whose private key is beside it).
    """
    pki = directory / "pki"
    write_dev_pki(pki, hosts=["fl-fedgrpc.training.svc"], admin=True)
    keys = directory / "keys"
    save_key_pair(PrivateKey.generate(), keys, "coordinator")
    save_key_pair(PrivateKey.generate(), keys, "alice")
    return {
        "fedgrpc-tls": {"tls.crt": pki / "server.pem", "tls.key": pki / "server.key"},
        "fedgrpc-client-ca": {"ca.crt": pki / "ca.pem"},
        "fedgrpc-admin": {"admin.token": pki / "admin.token"},
        "fedgrpc-identity": {"coordinator.key": keys / "coordinator.key"},
        "fedgrpc-clients": {"alice.pub": keys / "alice.pub"},
    }
