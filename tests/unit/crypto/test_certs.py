"""The development PKI, checked by cryptography's RFC 5280 path validation."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedgrpc.crypto import DevPki, certificate_fingerprint, write_dev_pki
from fedgrpc.crypto.certs import (
    create_ca,
    issue_client_certificate,
    issue_server_certificate,
)
from fedgrpc.errors import ConfigError, IdentityFileError

FILES = ["ca.key", "ca.pem", "client.key", "client.pem", "server.key", "server.pem"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return write_dev_pki(
        tmp_path_factory.mktemp("pki"),
        hosts=["coord.example.org", "10.1.2.3"],
        client_name="worker-7",
        days=30,
    )


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _store(pki: DevPki) -> Store:
    return Store([_cert(pki.ca_certificate)])


@pytest.mark.parametrize(
    "host", ["localhost", "127.0.0.1", "::1", "coord.example.org", "10.1.2.3"]
)
def test_server_certificate_verifies_for_every_listed_host(
    pki: DevPki, host: str
) -> None:
    subject: x509.DNSName | x509.IPAddress
    try:
        subject = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    verifier = PolicyBuilder().store(_store(pki)).build_server_verifier(subject)

    chain = verifier.verify(_cert(pki.server_certificate), [])

    assert chain[-1] == _cert(pki.ca_certificate)


def test_server_certificate_does_not_verify_for_another_host(pki: DevPki) -> None:
    verifier = (
        PolicyBuilder()
        .store(_store(pki))
        .build_server_verifier(x509.DNSName("evil.example.org"))
    )

    with pytest.raises(VerificationError):
        verifier.verify(_cert(pki.server_certificate), [])


def test_server_certificate_lists_the_hosts_as_sans(pki: DevPki) -> None:
    sans = (
        _cert(pki.server_certificate)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )

    assert sans.get_values_for_type(x509.DNSName) == ["coord.example.org", "localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [
        "10.1.2.3",
        "127.0.0.1",
        "::1",
    ]
    assert pki.server_hosts == (
        "coord.example.org",
        "10.1.2.3",
        "localhost",
        "127.0.0.1",
        "::1",
    )


def test_client_certificate_verifies_as_a_client_and_names_it(pki: DevPki) -> None:
    verifier = PolicyBuilder().store(_store(pki)).build_client_verifier()
    client = _cert(pki.client_certificate)

    verified = verifier.verify(client, [])

    assert verified.subjects == [
        x509.UniformResourceIdentifier("urn:fedgrpc:client:worker-7")
    ]
    common_name = client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert common_name[0].value == "worker-7"


def test_leaf_certificates_cannot_be_used_for_the_other_role(pki: DevPki) -> None:
    client_verifier = PolicyBuilder().store(_store(pki)).build_client_verifier()
    server_verifier = (
        PolicyBuilder()
        .store(_store(pki))
        .build_server_verifier(x509.DNSName("localhost"))
    )

    with pytest.raises(VerificationError):
        client_verifier.verify(_cert(pki.server_certificate), [])
    with pytest.raises(VerificationError):
        server_verifier.verify(_cert(pki.client_certificate), [])


def test_certificates_from_another_ca_do_not_verify(
    pki: DevPki, tmp_path: Path
) -> None:
    other = write_dev_pki(tmp_path)
    verifier = PolicyBuilder().store(_store(pki)).build_client_verifier()

    with pytest.raises(VerificationError):
        verifier.verify(_cert(other.client_certificate), [])


def test_files_keys_fingerprints_and_validity(pki: DevPki) -> None:
    directory = pki.ca_certificate.parent
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
    server = _cert(pki.server_certificate)

    assert sorted(modes) == FILES
    assert {name for name, mode in modes.items() if mode == 0o600} == {
        "ca.key",
        "client.key",
        "server.key",
    }
    assert pki.fingerprints["server.pem"] == certificate_fingerprint(server)
    assert isinstance(server.public_key(), ec.EllipticCurvePublicKey)
    assert server.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert dt.timedelta(days=30) < lifetime <= dt.timedelta(days=30, minutes=6)
    assert pki.not_after == server.not_valid_after_utc


def test_existing_files_are_kept_unless_overwrite(tmp_path: Path) -> None:
    first = write_dev_pki(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in FILES}

    with pytest.raises(IdentityFileError, match=r"refusing to overwrite .*ca\.key"):
        write_dev_pki(tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in FILES} == before

    second = write_dev_pki(tmp_path, overwrite=True)
    assert second.fingerprints["ca.pem"] != first.fingerprints["ca.pem"]


@pytest.mark.parametrize("host", ["", "bad host", "-x.example", "a..b", "ünï.example"])
def test_invalid_host_is_a_config_error(host: str) -> None:
    ca = create_ca(days=1)

    with pytest.raises(ConfigError, match="expected an IP address or a DNS name"):
        issue_server_certificate(ca, [host], days=1)


def test_invalid_client_name_and_days_are_config_errors() -> None:
    ca = create_ca(days=1)

    with pytest.raises(ConfigError, match="client_name='a b' is invalid"):
        issue_client_certificate(ca, "a b", days=1)
    with pytest.raises(ConfigError, match="days=0 is invalid"):
        create_ca(days=0)
