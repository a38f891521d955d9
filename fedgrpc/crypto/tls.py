"""TLS material for the coordinator and the client, read and checked before grpc.

grpc takes PEM bytes and checks nothing until a handshake: a key that does
not belong to its certificate, an expired certificate or a file that is not
PEM shows up only as "Socket closed" on the other side. Reading the files
here turns each of those into a `ConfigError` naming the option, at startup.

The results hold private keys: their reprs hide them, and only the
certificates' fingerprints (hex SHA-256 of the DER) are meant for logs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    PrivateKeyTypes,
    PublicKeyTypes,
)

from fedgrpc.crypto.certs import certificate_fingerprint
from fedgrpc.crypto.files import read_file
from fedgrpc.errors import ConfigError, IdentityFileError

TLSMode = Literal["tls", "mtls"]


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """What `grpc.ssl_server_credentials` needs, checked, plus what to log."""

    certificate_chain: bytes
    private_key: bytes = field(repr=False)
    client_ca: bytes | None
    """PEM CA bundle clients' certificates must chain to; None: no client certs."""
    certificate_sha256: str
    client_ca_sha256: str | None

    @property
    def mode(self) -> TLSMode:
        """`mtls` when client certificates are required, else `tls`."""
        return "tls" if self.client_ca is None else "mtls"


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """What `grpc.ssl_channel_credentials` needs, checked, plus what to log."""

    ca: bytes
    """PEM CA bundle the coordinator's certificate must chain to."""
    certificate_chain: bytes | None
    private_key: bytes | None = field(repr=False)
    certificate_sha256: str | None

    @property
    def mode(self) -> TLSMode:
        """`mtls` when this client presents a certificate, else `tls`."""
        return "tls" if self.certificate_chain is None else "mtls"


def load_server_tls(cert: str, key: str, client_ca: str = "") -> ServerTLS:
    """Read the coordinator's `tls_cert`, `tls_key` and `tls_client_ca` files.

    Args:
        cert: PEM certificate chain, leaf first.
        key: PEM private key of the leaf.
        client_ca: PEM CA bundle; "" serves TLS without client certificates.

    Raises:
        ConfigError: a file is unreadable or not PEM, the key does not belong
            to the certificate, or the certificate has expired; the message
            names the option and the path.
    """
    chain, private_key = _certificate_and_key("tls_cert", cert, "tls_key", key)
    ca = _certificates("tls_client_ca", client_ca) if client_ca else None
    return ServerTLS(
        certificate_chain=_pem(chain),
        private_key=private_key,
        client_ca=_pem(ca) if ca else None,
        certificate_sha256=certificate_fingerprint(chain[0]),
        client_ca_sha256=certificate_fingerprint(ca[0]) if ca else None,
    )


def load_client_tls(
    ca: str, cert: str = "", key: str = "", option_prefix: str = ""
) -> ClientTLS:
    """Read a client's `tls_ca` and, for mutual TLS, `tls_cert` and `tls_key`.

    `option_prefix` names the options in errors (`shard_`: a shard's vote).

    Raises:
        ConfigError: as `load_server_tls`, naming the client's option.
    """
    roots = _certificates(f"{option_prefix}tls_ca", ca)
    if not cert:
        return ClientTLS(_pem(roots), None, None, None)
    chain, private_key = _certificate_and_key(
        f"{option_prefix}tls_cert", cert, f"{option_prefix}tls_key", key
    )
    return ClientTLS(
        _pem(roots), _pem(chain), private_key, certificate_fingerprint(chain[0])
    )


def _certificate_and_key(
    cert_option: str, cert: str, key_option: str, key: str
) -> tuple[list[x509.Certificate], bytes]:
    chain = _certificates(cert_option, cert)
    leaf = chain[0]
    if leaf.not_valid_after_utc < dt.datetime.now(dt.UTC):
        raise ConfigError(
            f"{cert_option}={cert!r} expired on {leaf.not_valid_after_utc:%Y-%m-%d}; "
            "issue a new one (`fedgrpc certs` for development)"
        )
    data = _read(key_option, key)
    private_key = _private_key(key_option, key, data)
    if _spki(private_key.public_key()) != _spki(leaf.public_key()):
        raise ConfigError(
            f"{key_option}={key!r} is not the private key of the certificate in "
            f"{cert_option}={cert!r}; pass the key that was issued with it"
        )
    return chain, data


def _read(option: str, path: str) -> bytes:
    try:
        return read_file(path, "file")
    except IdentityFileError as exc:
        raise ConfigError(f"{option}={path!r} is unusable: {exc}") from exc


def _certificates(option: str, path: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(_read(option, path))
    except ValueError as exc:  # no PEM block, or a malformed one
        raise ConfigError(
            f"{option}={path!r} holds no PEM certificate "
            f"(-----BEGIN CERTIFICATE-----): {exc}"
        ) from exc


def _private_key(option: str, path: str, data: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:  # TypeError: it is encrypted
        # The message is cryptography's, which never quotes the key.
        raise ConfigError(
            f"{option}={path!r} is not an unencrypted PEM private key: {exc}"
        ) from exc


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _pem(certificates: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)
