"""Who is talking: signing identities (Ed25519) and TLS certificates.

Below the data path: `keys` holds the Ed25519 identities that Join,
allowed-keys lists and chunk signatures build on, and `files` puts them on
disk (private keys 0600, atomically); `signing` defines the canonical
statements every signature covers and the chained update signatures
(DESIGN.md step 5); `allowlist` reads the coordinator's allowed client
keys; `certs` makes a development CA and certificates for TLS and mutual
TLS; `tls` reads and checks the PEM files the coordinator and the client
hand to grpc. No module here imports grpc or protobuf
(tests/unit/test_layering.py); `wire` maps messages onto the statements,
and `coordinator` and `client` turn TLS files into grpc credentials.
"""

from __future__ import annotations

from fedgrpc.crypto.allowlist import AllowedKeys
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
from fedgrpc.crypto.signing import (
    JoinStatement,
    ModelStatement,
    UpdateSigner,
    UpdateStatement,
    UpdateVerifier,
)
from fedgrpc.crypto.tls import ClientTLS, ServerTLS, load_client_tls, load_server_tls

__all__ = [
    "SIGNATURE_ALGORITHMS",
    "AllowedKeys",
    "ClientTLS",
    "DevPki",
    "JoinStatement",
    "KeyPairFiles",
    "ModelStatement",
    "PrivateKey",
    "PublicKey",
    "ServerTLS",
    "SignatureAlgorithm",
    "UpdateSigner",
    "UpdateStatement",
    "UpdateVerifier",
    "certificate_fingerprint",
    "fingerprint",
    "load_client_tls",
    "load_private_key",
    "load_public_key",
    "load_server_tls",
    "save_key_pair",
    "write_dev_pki",
]
