"""TLS options: config-time checks and the PEM checks before grpc sees the files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.crypto import DevPki, load_client_tls, load_server_tls, write_dev_pki
from fedgrpc.crypto.certs import Issued, create_ca
from fedgrpc.errors import ConfigError


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return write_dev_pki(tmp_path_factory.mktemp("pki"), days=2)


def _server_options(pki: DevPki) -> dict[str, str]:
    return {
        "tls_cert": str(pki.server_certificate),
        "tls_key": str(pki.server_key),
        "tls_client_ca": str(pki.ca_certificate),
    }


def test_coordinator_accepts_a_complete_tls_setup(pki: DevPki) -> None:
    config = CoordinatorConfig(**_server_options(pki))  # type: ignore[arg-type]

    tls = load_server_tls(config.tls_cert, config.tls_key, config.tls_client_ca)

    assert tls.mode == "mtls"
    assert tls.certificate_sha256 == pki.fingerprints["server.pem"]
    assert tls.client_ca_sha256 == pki.fingerprints["ca.pem"]
    assert tls.private_key == pki.server_key.read_bytes()
    assert b"PRIVATE" not in repr(tls).encode()
    assert load_server_tls(config.tls_cert, config.tls_key).mode == "tls"


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("tls_key", r"tls_key='' is invalid: expected the private key of tls_cert="),
        ("tls_cert", r"tls_cert='' is invalid: expected the certificate of tls_key="),
    ],
)
def test_coordinator_cert_and_key_come_together(
    pki: DevPki, drop: str, message: str
) -> None:
    options = _server_options(pki)
    del options["tls_client_ca"]
    options[drop] = ""

    with pytest.raises(ConfigError, match=message):
        CoordinatorConfig(**options)  # type: ignore[arg-type]


def test_client_ca_without_a_server_certificate_is_refused(pki: DevPki) -> None:
    with pytest.raises(ConfigError, match=r"tls_client_ca=.* expected tls_cert"):
        CoordinatorConfig(tls_client_ca=str(pki.ca_certificate))


@pytest.mark.parametrize("option", ["tls_cert", "tls_key", "tls_client_ca"])
def test_unreadable_file_is_named_at_construction(
    pki: DevPki, tmp_path: Path, option: str
) -> None:
    options = _server_options(pki)
    options[option] = str(tmp_path / "missing.pem")

    with pytest.raises(ConfigError, match=rf"{option}='.*missing\.pem' cannot be read"):
        CoordinatorConfig(**options)  # type: ignore[arg-type]


def test_key_of_another_certificate_is_refused(pki: DevPki) -> None:
    with pytest.raises(ConfigError, match=r"tls_key=.*client\.key' is not the private"):
        load_server_tls(str(pki.server_certificate), str(pki.client_key))


def test_non_pem_files_are_refused_naming_the_option(
    pki: DevPki, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")

    with pytest.raises(ConfigError, match=r"tls_cert=.*junk\.pem' holds no PEM cert"):
        load_server_tls(str(junk), str(pki.server_key))
    with pytest.raises(
        ConfigError, match=r"tls_key=.*junk\.pem' is not an unencrypted"
    ):
        load_server_tls(str(pki.server_certificate), str(junk))
    with pytest.raises(ConfigError, match=r"tls_client_ca=.*junk\.pem' holds no PEM"):
        load_server_tls(str(pki.server_certificate), str(pki.server_key), str(junk))
    with pytest.raises(ConfigError, match=r"tls_ca=.*junk\.pem' holds no PEM"):
        load_client_tls(str(junk))


def test_expired_certificate_is_refused(tmp_path: Path) -> None:
    ca = create_ca(days=1)
    now = dt.datetime.now(dt.UTC)
    expired = (
        x509.CertificateBuilder()
        .subject_name(ca.certificate.subject)
        .issuer_name(ca.certificate.subject)
        .public_key(ca.key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(ca.key, hashes.SHA256())
    )
    issued = Issued(ca.key, expired)
    (tmp_path / "old.pem").write_bytes(issued.certificate_pem())
    (tmp_path / "old.key").write_bytes(issued.key_pem())

    with pytest.raises(ConfigError, match=r"tls_cert=.*old\.pem' expired on"):
        load_server_tls(str(tmp_path / "old.pem"), str(tmp_path / "old.key"))


def test_client_tls_options(pki: DevPki) -> None:
    mutual = ClientConfig(
        tls_ca=str(pki.ca_certificate),
        tls_cert=str(pki.client_certificate),
        tls_key=str(pki.client_key),
    )

    tls = load_client_tls(mutual.tls_ca, mutual.tls_cert, mutual.tls_key)

    assert tls.mode == "mtls"
    assert tls.certificate_sha256 == pki.fingerprints["client.pem"]
    assert load_client_tls(str(pki.ca_certificate)).mode == "tls"
    with pytest.raises(ConfigError, match="tls_ca='' is invalid"):
        ClientConfig(tls_cert=str(pki.client_certificate), tls_key=str(pki.client_key))
    with pytest.raises(ConfigError, match="tls_key='' is invalid"):
        ClientConfig(
            tls_ca=str(pki.ca_certificate), tls_cert=str(pki.client_certificate)
        )
