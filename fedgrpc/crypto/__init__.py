"""Who is talking: signing identities (Ed25519) and TLS certificates.

Off the data path and below it: `keys` holds the Ed25519 identities that
Join, allowed-keys lists and chunk signatures build on, and `files` puts
them on disk (private keys 0600, atomically); `certs` makes a development
CA and certificates for TLS and mutual TLS; `tls` reads and checks the PEM
files the coordinator and the client hand to grpc. No module
here imports grpc (tests/unit/test_layering.py); `coordinator` and `client`
turn these into grpc credentials.
"""

from __future__ import annotations

from fedgrpc.crypto.certs import DevPki, certificate_fingerprint, write_dev_pki
from fedgrpc.crypto.files import (
    KeyPairFiles,
    load_private_key,
    load_public_key,
    save_key_pair,
)
from fedgrpc.crypto.keys import (
    SIGNATURE_ALGORITHMS,
    PrivateKey,
    PublicKey,
    SignatureAlgorithm,
    fingerprint,
)
from fedgrpc.crypto.tls import ClientTLS, ServerTLS, load_client_tls, load_server_tls

__all__ = [
    "SIGNATURE_ALGORITHMS",
    "ClientTLS",
    "DevPki",
    "KeyPairFiles",
    "PrivateKey",
    "PublicKey",
    "ServerTLS",
    "SignatureAlgorithm",
    "certificate_fingerprint",
    "fingerprint",
    "load_client_tls",
    "load_private_key",
    "load_public_key",
    "load_server_tls",
    "save_key_pair",
    "write_dev_pki",
]
