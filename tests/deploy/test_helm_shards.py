"""server/helm/fedgrpc with N parameter shards: one pod per shard, I its ordinal.

Rendered by Helm's own engine and checked as a pod would run it: the
container's command goes through a real /bin/sh with each pod's hostname
(`fedgrpc` on PATH replaced by a script that prints the argv it is given),
and that argv through fedgrpc's own parser and config loader, so the shard
index, the peers (the headless Service's per-pod names, in shard order) and
the token file are what `fedgrpc serve` would start with. N = 1 keeps the
unsharded pod: no shell, no shard flags, no token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
from helm_python import HelmRenderError

from fedgrpc.cli import build_parser, serve_config
from fedgrpc.config import CoordinatorConfig
from tests.helpers.helm_chart import FULL_VALUES, NAMESPACE, Rendered, render

TOKEN_SECRET = "fedgrpc-shard"
SHARDED = {"shards": 3, "sharding": {"tokenSecretName": TOKEN_SECRET}}


def _pod_argv(rendered: Rendered, hostname: str, tmp_path: Path) -> list[str]:
    """What the container execs as `fedgrpc ...`, run through a real /bin/sh."""
    stub = tmp_path / "bin" / "fedgrpc"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(
        f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n"
    )
    stub.chmod(0o755)
    container = rendered.container
    command = container.get("command") or ["fedgrpc"]
    env = {"HOSTNAME": hostname, "PATH": f"{stub.parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        [*command, *container["args"]],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    argv: list[str] = json.loads(done.stdout)
    return argv


def _config(argv: list[str], rendered: Rendered, tmp_path: Path) -> CoordinatorConfig:
    """`fedgrpc serve ARGV`'s config, the TOML and the token file laid out locally."""
    toml = tmp_path / "coordinator.toml"
    toml.write_text(rendered.toml)
    token = tmp_path / "shard.token"
    token.write_text("s" * 40 + "\n")
    token.chmod(0o600)
    args = build_parser().parse_args(argv)
    args.config = str(toml)
    if args.shard_token_file:
        args.shard_token_file = str(token)
    return serve_config(args)


def test_one_shard_is_the_unsharded_pod(tmp_path: Path) -> None:
    rendered = render({"shards": 1})
    statefulset = rendered.one("StatefulSet")

    assert statefulset["spec"]["replicas"] == 1
    assert "command" not in rendered.container  # the image's entrypoint
    argv = _pod_argv(rendered, "fl-fedgrpc-0", tmp_path)
    assert argv == ["serve", "--config", "/etc/fedgrpc/config/coordinator.toml"]
    assert "/etc/fedgrpc/shard-token" not in rendered.mounts()
    config = _config(argv, rendered, tmp_path)
    assert (config.shard_count, config.shard_peers) == (1, ())
    assert "shard" not in rendered.notes


def test_three_shards_each_pod_runs_its_ordinal_with_every_peer_and_the_token(
    tmp_path: Path,
) -> None:
    rendered = render(SHARDED)
    statefulset = rendered.one("StatefulSet")
    headless = rendered.one("Service", "fl-fedgrpc-headless")
    peers = [
        f"fl-fedgrpc-{i}.fl-fedgrpc-headless.{NAMESPACE}.svc:7070" for i in range(3)
    ]

    assert statefulset["spec"]["replicas"] == 3
    assert statefulset["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True  # peers at start
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    # A checkpoint claim per pod, where checkpoint_dir lies.
    claims = statefulset["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["state"]
    assert rendered.mount_of(rendered.table["checkpoint_dir"])[1] == {
        **claims[0],
        **rendered.mounts()["/var/lib/fedgrpc"],
    }
    for ordinal in range(3):
        argv = _pod_argv(rendered, f"fl-fedgrpc-{ordinal}", tmp_path)
        assert argv[-2:] == ["--shard", f"{ordinal}/3"]
        config = _config(argv, rendered, tmp_path)
        assert (config.shard_index, config.shard_count) == (ordinal, 3)
        assert list(config.shard_peers) == peers
    # The token: the Secret's key, mounted read-only where --shard-token-file is.
    args = rendered.container["args"]
    token_path = args[args.index("--shard-token-file") + 1]
    mount, volume = rendered.mount_of(token_path)
    assert volume["readOnly"] is True
    assert volume["secret"] == {"secretName": TOKEN_SECRET, "defaultMode": 0o400}
    assert PurePosixPath(token_path).relative_to(mount).name == "shard.token"
    assert "3 parameter shards" in rendered.notes


def test_peers_clients_outside_the_cluster_reach_replace_the_dns_names(
    tmp_path: Path,
) -> None:
    peers = ["shard-0.example.org:443", "shard-1.example.org:443"]
    rendered = render(
        {"shards": 2, "sharding": {"tokenSecretName": TOKEN_SECRET, "peers": peers}}
    )

    argv = _pod_argv(rendered, "fl-fedgrpc-1", tmp_path)

    assert argv[argv.index("--shard-peers") + 1] == ",".join(peers)
    config = _config(argv, rendered, tmp_path)
    assert (config.shard_index, config.shard_peers) == (1, tuple(peers))


def test_tls_shards_vote_over_tls_with_the_ca_and_client_certificate_secrets(
    tmp_path: Path,
) -> None:
    rendered = render(
        {
            **FULL_VALUES,
            "shards": 2,
            "sharding": {
                "tokenSecretName": TOKEN_SECRET,
                "tls": {"caSecretName": "shard-ca", "clientSecretName": "shard-client"},
            },
        }
    )

    argv = _pod_argv(rendered, "fl-fedgrpc-1", tmp_path)
    args = build_parser().parse_args(argv)
    for path, secret, mode in (
        (args.shard_tls_ca, "shard-ca", 0o444),
        (args.shard_tls_cert, "shard-client", 0o400),
        (args.shard_tls_key, "shard-client", 0o400),
    ):
        _, volume = rendered.mount_of(path)
        assert volume["readOnly"] is True
        assert volume["secret"] == {"secretName": secret, "defaultMode": mode}
    assert PurePosixPath(args.shard_tls_ca).name == "ca.crt"
    assert PurePosixPath(args.shard_tls_cert).name == "tls.crt"
    assert rendered.table["tls_client_ca"]  # the leader requires client certs


@pytest.mark.parametrize(
    "key",
    [
        "shard", "shard_peers", "shard_token_file", "shard_tls_ca",
        "shard_tls_cert", "shard_tls_key",
    ],
)  # fmt: skip
def test_the_shard_keys_are_the_charts_own(key: str) -> None:
    with pytest.raises(HelmRenderError, match=rf"coordinator\.config\.{key} is set"):
        render({**SHARDED, "coordinator": {"config": {key: "x"}}})
