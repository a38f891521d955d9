"""Shards serving mutual TLS: clients and the shards' own votes go over TLS.

The leader's ShardService shares its TLS port with the clients', so a TLS
shard's votes dial TLS, verify the leader with `shard_tls_ca` and present
a client certificate of the leader's client CA (`shard_tls_cert`). Real
certificates (`write_dev_pki`), real gRPC: rounds apply on both shards.
Without the CA, or with mTLS but no certificate, a shard refuses to start
naming the setting; a vote presenting no certificate is refused by the
TLS handshake itself.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from fedgrpc._proto.v1 import shard_pb2, shard_pb2_grpc
from fedgrpc.config import ClientConfig
from fedgrpc.crypto import DevPki, write_dev_pki
from fedgrpc.errors import ConfigError
from tests.helpers.shards import join, running_shards, scripted, shard_configs
from tests.helpers.tree import close_all, run_round


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return write_dev_pki(tmp_path_factory.mktemp("pki"), client_name="shard-1")


def _tls(pki: DevPki) -> dict[str, str]:
    return {
        "tls_cert": str(pki.server_certificate),
        "tls_key": str(pki.server_key),
        "tls_client_ca": str(pki.ca_certificate),
    }


def test_two_mtls_shards_apply_rounds_over_tls_votes(
    tmp_path: Path, pki: DevPki
) -> None:
    configs = shard_configs(
        tmp_path,
        2,
        **_tls(pki),
        shard_tls_ca=str(pki.ca_certificate),
        shard_tls_cert=str(pki.client_certificate),
        shard_tls_key=str(pki.client_key),
    )
    client = ClientConfig(
        rpc_timeout_s=10, round_wait_s=30, connect_timeout_s=20,
        tls_ca=str(pki.ca_certificate), tls_cert=str(pki.client_certificate),
        tls_key=str(pki.client_key),
    )  # fmt: skip
    steps = scripted(2, 2, seed=8)
    with running_shards(configs) as shards:
        members = join(shards[0].address, (1, 2), seed=50, config=client)
        try:
            outcomes = [run_round(members, [s[r] for s in steps]) for r in range(2)]
        finally:
            close_all(members)
        versions = [s.running.runtime.engine.model.version for s in shards]
        # A vote without a client certificate never reaches ShardService.
        credentials = grpc.ssl_channel_credentials(pki.ca_certificate.read_bytes())
        with grpc.secure_channel(shards[0].address, credentials) as channel:
            stub = shard_pb2_grpc.ShardServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ProposeCommit(shard_pb2.ProposeCommitRequest(), timeout=10)
    assert outcomes == [["applied", "applied"]] * 2
    assert versions == [2, 2]
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ({"shard_tls_ca": ""}, "shard_tls_ca"),
        ({"shard_tls_cert": "", "shard_tls_key": ""}, "shard_tls_cert"),
        ({"shard_tls_key": ""}, "shard_tls_key"),
    ],
)
def test_tls_shards_without_what_their_votes_need_are_refused(
    tmp_path: Path, pki: DevPki, missing: dict[str, str], named: str
) -> None:
    settings = {
        **_tls(pki),
        "shard_tls_ca": str(pki.ca_certificate),
        "shard_tls_cert": str(pki.client_certificate),
        "shard_tls_key": str(pki.client_key),
        **missing,
    }
    with pytest.raises(ConfigError, match=named):
        shard_configs(tmp_path, 2, **settings)


def test_plaintext_shards_refuse_a_shard_tls_ca(tmp_path: Path, pki: DevPki) -> None:
    with pytest.raises(ConfigError, match="unset without tls_cert"):
        shard_configs(tmp_path, 2, shard_tls_ca=str(pki.ca_certificate))
