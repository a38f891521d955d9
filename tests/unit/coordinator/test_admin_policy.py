"""AdminPolicy decides who may call AdminService (pure: no server needed)."""

from __future__ import annotations

import grpc
import pytest

from fedgrpc.coordinator.services.admin_access import AdminPolicy, is_loopback
from fedgrpc.crypto import write_dev_pki
from fedgrpc.crypto.admin_token import bearer_metadata

TOKEN = b"t" * 32
REMOTE = "ipv4:203.0.113.7:40000"
LOCAL = "ipv4:127.0.0.1:40000"


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        ("ipv4:127.0.0.1:5", True),
        ("ipv4:127.8.9.1:5", True),
        ("ipv6:[::1]:5", True),
        ("ipv6:[::ffff:127.0.0.1]:5", True),
        ("unix:/tmp/s", True),
        ("ipv4:192.0.2.2:5", False),
        ("ipv6:[2001:db8::1]:5", False),
        ("ipv6:[::ffff:192.0.2.2]:5", False),
        ("garbage", False),
        ("", False),
    ],
)
def test_loopback_peers_are_told_apart_from_remote_ones(peer: str, local: bool) -> None:
    assert is_loopback(peer) is local


def test_loopback_mode_admits_local_callers_and_refuses_remote_ones() -> None:
    policy = AdminPolicy("loopback")
    assert policy.refusal((), LOCAL, {}) is None
    refusal = policy.refusal((), REMOTE, {})
    assert refusal is not None
    assert refusal.code == grpc.StatusCode.UNAUTHENTICATED


def test_credential_mode_wants_the_token_even_on_loopback() -> None:
    policy = AdminPolicy("credential", TOKEN)
    assert policy.refusal((), LOCAL, {}) is not None
    assert policy.refusal(bearer_metadata(TOKEN), REMOTE, {}) is None
    wrong = policy.refusal(bearer_metadata(b"u" * 32), LOCAL, {})
    assert wrong is not None
    assert wrong.code == grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN.decode() not in wrong.message


def test_a_wrong_token_is_refused_even_where_loopback_would_do() -> None:
    # A caller that presents a credential is judged by it, not by its address.
    policy = AdminPolicy("loopback", TOKEN)
    assert policy.refusal(bearer_metadata(b"u" * 32), LOCAL, {}) is not None
    assert policy.refusal((("authorization", "Basic abc"),), LOCAL, {}) is not None


def test_an_admin_certificate_is_honoured_only_under_mutual_tls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pki = write_dev_pki(tmp_path, admin=True)
    assert pki.admin_certificate is not None
    admin = {"x509_pem_cert": [pki.admin_certificate.read_bytes()]}
    worker = {"x509_pem_cert": [pki.client_certificate.read_bytes()]}
    assert (
        AdminPolicy("credential", None, certificates=True).refusal((), REMOTE, admin)
        is None
    )
    denied = AdminPolicy("credential", None, certificates=True).refusal(
        (), REMOTE, worker
    )
    assert denied is not None
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    assert AdminPolicy("credential", TOKEN).refusal((), REMOTE, admin) is not None


def test_open_mode_admits_anyone() -> None:
    assert AdminPolicy("open").refusal((), REMOTE, {}) is None
