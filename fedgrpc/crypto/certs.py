"""A development PKI for TLS and mutual TLS: one CA, a server and a client cert.

`fedgrpc certs --out DIR` calls `write_dev_pki`, which writes ca.pem, ca.key,
server.pem, server.key, client.pem and client.key (keys 0600). Like mkcert,
it keeps the CA key (ca.key) so more client certificates can be issued later;
it belongs on the operator's machine, never on the coordinator or a client.
This is for development and closed test beds: no revocation, no intermediate
CA, no renewal.

Why ECDSA P-256 and not Ed25519 (the identity keys' algorithm): grpcio's
BoringSSL handshakes reliably with P-256 certificates, while with Ed25519
certificates grpcio 1.85 fails every handshake with
NO_COMMON_SIGNATURE_ALGORITHMS (checked on this machine). TLS secures the
channel; the Ed25519 identity keys in `keys.py` sign updates above it.

The profile follows RFC 5280 as `cryptography.x509.verification` checks it:
CA with pathLen 0; leaves with serverAuth or clientAuth, a subjectAltName
(server: DNS names and IP addresses; client: `urn:fedgrpc:client:NAME`) and
key identifiers. Validity starts 5 minutes in the past to absorb clock skew.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedgrpc.crypto.admin_token import new_admin_token
from fedgrpc.crypto.files import PUBLIC_MODE, SECRET_MODE, PendingFile, write_files
from fedgrpc.errors import ConfigError, check_config

DEFAULT_DAYS = 365
MAX_DAYS = 3650
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
"""Always in the server certificate, so a local coordinator works out of the box."""
CLIENT_URI_PREFIX = "urn:fedgrpc:client:"
ADMIN_URI = "urn:fedgrpc:admin"
"""SAN URI of a client certificate with the admin role: under mutual TLS it
may call AdminService (`coordinator.services.admin_access`)."""
_CLOCK_SKEW = dt.timedelta(minutes=5)
_DNS_NAME = re.compile(
    r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?"
)
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NO_USAGE = dict.fromkeys(
    ("digital_signature", "content_commitment", "key_encipherment",
     "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
     "encipher_only", "decipher_only"),
    False,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key (never logged; see `fingerprint`)."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the DER certificate (see `certificate_fingerprint`)."""
        return certificate_fingerprint(self.certificate)

    def certificate_pem(self) -> bytes:
        """The certificate as PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The key as unencrypted PKCS#8 PEM, which grpc reads. Keep it 0600."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the DER encoding of `certificate`.

    What `openssl x509 -noout -fingerprint -sha256` prints, without colons.
    """
    return hashlib.sha256(
        certificate.public_bytes(serialization.Encoding.DER)
    ).hexdigest()


def create_ca(
    common_name: str = "fedgrpc development CA", days: int = DEFAULT_DAYS
) -> Issued:
    """A self-signed CA that may sign leaf certificates only (pathLen 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    builder = _builder(name, name, key.public_key(), days).add_extension(
        x509.BasicConstraints(ca=True, path_length=0), critical=True
    )
    usage = {"digital_signature": True, "key_cert_sign": True, "crl_sign": True}
    builder = builder.add_extension(
        x509.KeyUsage(**{**_NO_USAGE, **usage}), critical=True
    )
    return Issued(key, builder.sign(key, hashes.SHA256()))


def issue_server_certificate(
    ca: Issued, hosts: Sequence[str] = (), days: int = DEFAULT_DAYS
) -> Issued:
    """A serverAuth certificate for `hosts` plus localhost, 127.0.0.1 and ::1.

    Each host is an IP address or a DNS name; the first one given becomes the
    common name. Clients check the host part of their target against these.

    Raises:
        ConfigError: a host is neither an IP address nor a DNS name.
    """
    names = list(dict.fromkeys([*hosts, *LOOPBACK_HOSTS]))
    sans = [_general_name(host) for host in names]
    return _issue_leaf(ca, names[0], ExtendedKeyUsageOID.SERVER_AUTH, sans, days)


def issue_client_certificate(
    ca: Issued, client_name: str = "client", days: int = DEFAULT_DAYS
) -> Issued:
    """A clientAuth certificate with CN and a `urn:fedgrpc:client:NAME` SAN.

    Raises:
        ConfigError: `client_name` is not 1-64 of [A-Za-z0-9._-].
    """
    check_config(bool(_CLIENT_NAME.fullmatch(client_name)), "client_name",
                 client_name, "1-64 letters, digits, '.', '_' or '-'")  # fmt: skip
    sans = [x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + client_name)]
    return _issue_leaf(ca, client_name, ExtendedKeyUsageOID.CLIENT_AUTH, sans, days)


def issue_admin_certificate(ca: Issued, days: int = DEFAULT_DAYS) -> Issued:
    """A clientAuth certificate with the admin role (SAN URI `ADMIN_URI`).

    For operators (`fedgrpc status`), not for training clients: it may read
    every client's status. Training clients get `issue_client_certificate`.
    """
    sans = [x509.UniformResourceIdentifier(ADMIN_URI)]
    return _issue_leaf(ca, "admin", ExtendedKeyUsageOID.CLIENT_AUTH, sans, days)


def _issue_leaf(
    ca: Issued,
    common_name: str,
    purpose: x509.ObjectIdentifier,
    sans: Sequence[x509.GeneralName],
    days: int,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(_name(common_name), ca.certificate.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(**{**_NO_USAGE, "digital_signature": True}), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    days: int,
) -> x509.CertificateBuilder:
    check_config(1 <= days <= MAX_DAYS, "days", days, f"1..{MAX_DAYS}")
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedgrpc development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _DNS_NAME.fullmatch(host) or len(host) > 253:
        raise ConfigError(
            f"host {host!r} is invalid: expected an IP address or a DNS name "
            "such as coordinator.example.org"
        )
    return x509.DNSName(host)


@dataclass(frozen=True, slots=True)
class DevPki:
    """What `write_dev_pki` wrote: the paths and the certificates' fingerprints."""

    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path
    client_certificate: Path
    client_key: Path
    server_hosts: tuple[str, ...]
    client_name: str
    fingerprints: dict[str, str]
    """Certificate file name (ca.pem, server.pem, client.pem) -> SHA-256 hex."""
    not_after: dt.datetime
    admin_certificate: Path | None = None
    """With `admin`: admin.pem, a client certificate with the admin role."""
    admin_key: Path | None = None
    admin_token: Path | None = None
    """With `admin`: admin.token (0600), for `admin_token_file`."""


def write_dev_pki(
    directory: str | Path,
    *,
    hosts: Sequence[str] = (),
    client_name: str = "client",
    days: int = DEFAULT_DAYS,
    overwrite: bool = False,
    admin: bool = False,
) -> DevPki:
    """Create a CA, a server and a client certificate and write them to `directory`.

    With `admin`, also an admin client certificate (admin.pem, admin.key)
    and an admin token (admin.token) for the coordinator's AdminService.
    Nothing is written if any of the files exists (unless `overwrite`).

    Raises:
        ConfigError: a host, the client name or `days` is invalid.
        IdentityFileError: a file exists, or `directory` is not writable.
    """
    ca = create_ca(days=days)
    server = issue_server_certificate(ca, hosts, days)
    client = issue_client_certificate(ca, client_name, days)
    base = Path(directory)
    issued = {"ca": ca, "server": server, "client": client}
    if admin:
        issued["admin"] = issue_admin_certificate(ca, days)
    files = []
    if admin:
        files.append(PendingFile(base / "admin.token", new_admin_token(), SECRET_MODE))
    for stem, item in issued.items():
        files.append(
            PendingFile(base / f"{stem}.pem", item.certificate_pem(), PUBLIC_MODE)
        )
        files.append(PendingFile(base / f"{stem}.key", item.key_pem(), SECRET_MODE))
    write_files(files, overwrite=overwrite)
    return DevPki(
        ca_certificate=base / "ca.pem",
        ca_key=base / "ca.key",
        server_certificate=base / "server.pem",
        server_key=base / "server.key",
        client_certificate=base / "client.pem",
        client_key=base / "client.key",
        server_hosts=tuple(dict.fromkeys([*hosts, *LOOPBACK_HOSTS])),
        client_name=client_name,
        fingerprints={f"{stem}.pem": item.fingerprint for stem, item in issued.items()},
        not_after=server.certificate.not_valid_after_utc,
        admin_certificate=base / "admin.pem" if admin else None,
        admin_key=base / "admin.key" if admin else None,
        admin_token=base / "admin.token" if admin else None,
    )
