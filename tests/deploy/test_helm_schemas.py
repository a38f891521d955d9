"""server/helm/fedgrpc as a cluster's API server and `helm install` would judge it.

Rendered by Helm's own engine (`helm-python-sdk`), so templates, `fail`
messages and values.schema.json behave as in `helm install`. Every object
is validated against the Kubernetes OpenAPI schemas (`kubernetes-validate`,
strict: an unknown field is an error) for the oldest Kubernetes the chart
supports and the newest the package knows; the ServiceMonitor against the
Prometheus Operator's CRD (the pydantic models cloudcoil generates from
it). Values that cannot work must fail the render, saying why.
"""

from __future__ import annotations

from typing import Any

import pytest
from cloudcoil.models.prometheus_operator import v1 as prometheus
from helm_python import HelmRenderError, HelmValuesError
from kubernetes_validate import utils as k8s_schema

from tests.helpers.helm_chart import FULL_VALUES, Object, Rendered, lint, render

OLDEST_KUBERNETES = "1.27.0"
"""Chart.yaml's kubeVersion floor: native gRPC probes are GA from 1.27."""
KUBERNETES_VERSIONS = (OLDEST_KUBERNETES, k8s_schema.latest_version())
SHARDED_FULL: Object = {
    **FULL_VALUES,
    "shards": 3,
    "sharding": {
        "tokenSecretName": "fedgrpc-shard",
        "tls": {
            "caSecretName": "fedgrpc-shard-ca",
            "clientSecretName": "fedgrpc-shard-client",
        },
    },
}
"""Three shards with monitoring, the dashboard and every Secret, mutual TLS
included (the shards' votes dial the leader over TLS with a client cert)."""


def _validate_kubernetes(obj: Object) -> None:
    for version in KUBERNETES_VERSIONS:
        k8s_schema.validate(obj, version, strict=True)


def _validate_service_monitor(obj: Object) -> None:
    """The CRD's schema (types, enums, patterns, required fields); and, since
    the models ignore fields they do not know, a round trip that would drop
    a misspelt one."""
    monitor = prometheus.ServiceMonitor.model_validate(obj)
    assert monitor.model_dump(by_alias=True, exclude_none=True) == obj


def _validate_all(rendered: Rendered) -> None:
    for obj in rendered.objects:
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            _validate_service_monitor(obj)
        else:
            _validate_kubernetes(obj)


def _lint_errors(values: Object | None = None) -> list[Any]:
    report = lint(values)
    errors = [m for m in report["messages"] if m["severity"] >= 2]  # warning+
    return [*report["errors"], *errors]


def test_default_render_is_the_coordinator_and_its_services() -> None:
    rendered = render()

    assert rendered.kinds() == [
        "ConfigMap", "PodDisruptionBudget", "Service", "Service", "StatefulSet",
    ]  # fmt: skip
    assert "open enrollment" in rendered.notes
    full = render(FULL_VALUES)
    assert "ServiceMonitor" in full.kinds()
    assert "open enrollment" not in full.notes


def test_validators_catch_a_misspelt_field() -> None:
    # The checks above are only worth something if they can fail.
    rendered = render(FULL_VALUES)
    statefulset = rendered.one("StatefulSet")
    statefulset["spec"]["template"]["spec"]["containers"][0]["readinessProbe"][
        "httpGett"
    ] = {"path": "/readyz", "port": "http"}
    with pytest.raises(k8s_schema.ValidationError, match="httpGett"):
        _validate_kubernetes(statefulset)

    monitor = rendered.one("ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(AssertionError):
        _validate_service_monitor(monitor)
    monitor["spec"]["endpoints"][0]["scheme"] = "ftp"
    with pytest.raises(ValueError, match="scheme"):
        _validate_service_monitor(monitor)


@pytest.mark.parametrize(
    "values",
    [{}, FULL_VALUES, {"persistence": {"enabled": False}},
     {"tls": {"enabled": True, "secretName": "t"}, "probes": {"type": "tcp"},
      "service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/8"]}},
     {"shards": 1}, SHARDED_FULL],
    ids=["defaults", "monitoring-tls-secrets", "no-persistence", "tls-tcp-lb",
         "one-shard", "three-shards-full"],
)  # fmt: skip
def test_every_rendered_object_is_valid(values: Object) -> None:
    rendered = render(values)

    _validate_all(rendered)
    assert _lint_errors(values) == []
    assert {"ConfigMap", "PodDisruptionBudget", "Service", "StatefulSet"} <= set(
        rendered.kinds()
    )


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        ({"shards": 65}, HelmValuesError, "/shards': maximum: got 65, want 64"),
        ({"shards": 0}, HelmValuesError, "/shards': minimum: got 0, want 1"),
        ({"shards": 2}, HelmRenderError,
         "shards > 1 needs sharding.tokenSecretName"),
        ({"shards": 3, "sharding": {"tokenSecretName": "s", "peers": ["a:1", "b:2"]}},
         HelmRenderError, "sharding.peers lists 2 addresses for 3 shards"),
        ({"sharding": {"peers": ["no-port"]}}, HelmValuesError, "/sharding/peers/0"),
        ({**SHARDED_FULL, "sharding": {"tokenSecretName": "s"}}, HelmRenderError,
         "shards > 1 with tls.enabled needs sharding.tls.caSecretName"),
        ({**SHARDED_FULL, "sharding": {"tokenSecretName": "s",
                                       "tls": {"caSecretName": "c"}}},
         HelmRenderError,
         "shards > 1 with tls.clientCA.enabled needs sharding.tls.clientSecretName"),
        ({"sharding": {"tls": {"caFile": "x"}}}, HelmValuesError, "/sharding/tls"),
        ({"coordinator": {"config": {"listen": "0.0.0.0:1"}}}, HelmRenderError,
         "coordinator.config.listen is set by the chart"),
        ({"coordinator": {"config": {"outer_optimizer_params": {"lr": 1}}}},
         HelmValuesError, "/coordinator/config/outer_optimizer_params"),
        ({"tls": {"enabled": True, "secretName": "t"}}, HelmRenderError,
         "kubelet's gRPC probes speak plaintext"),
        ({"probes": {"type": "http"}}, HelmRenderError, "set http.enabled=true"),
        ({"clientKeys": {"secretName": "c"}}, HelmRenderError,
         "clientKeys.secretName needs identity.secretName"),
        ({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
         HelmRenderError, "set metrics.enabled=true"),
    ],
)  # fmt: skip
def test_values_that_cannot_work_fail_the_render_saying_why(
    values: Object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace(".", r"\.")):
        render(values)
