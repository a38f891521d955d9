"""`fedgrpc keygen`, `certs` and `verify`: identity, TLS and audit files.

Separate from cli.py, which drives the coordinator and simulations, because
these only read or write files: argparse, then one `fedgrpc.crypto` or
`fedgrpc.wire.export` call, then a summary on stdout. Errors (a file exists,
a directory is not writable, a bad host name, a file that is no export) are
`FedGrpcError`s, which `cli.main` prints as one line with exit code 2;
`verify` exits 1 when the update does not match.
"""

from __future__ import annotations

import argparse
import sys

from fedgrpc.crypto.certs import DEFAULT_DAYS, DevPki, write_dev_pki
from fedgrpc.crypto.files import load_public_key, save_key_pair
from fedgrpc.crypto.keys import PrivateKey

_FORCE_HELP = "replace existing files (default: refuse and write nothing)"


def add_identity_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Register `keygen`, `certs` and `verify` on the `fedgrpc` command."""
    _keygen_parser(sub)
    _certs_parser(sub)
    _verify_parser(sub)


def _verify_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "verify",
        help="check an exported update against the digest the coordinator logged",
        description="Re-verify an update a client exported "
        "(ClientConfig.export_updates_dir): every payload's hash (BLAKE3 or "
        "SHA-256, as its header names), chain link and signature, and the "
        "commit; then compare the update's digest (the "
        "chain head) with --hash, the update_sha256 the coordinator logged "
        "(update_committed) and returned. Exit 0 if it matches, 1 if not, 2 if "
        "the file cannot be read as an export.",
    )
    parser.add_argument(
        "--update", required=True, metavar="FILE", help="the .fedupdate file"
    )
    parser.add_argument(
        "--hash", required=True, metavar="HEX", help="the expected "
        "update_sha256 (64 hex characters; the chain head under the update's "
        "hash, BLAKE3 or SHA-256)"
    )  # fmt: skip
    parser.add_argument(
        "--key", metavar="PUB", help="require this signer (the client's .pub "
        "file); default: the key the file names"
    )  # fmt: skip
    parser.add_argument(
        "--base", metavar="HEX", help="also require the base model digest the "
        "update signed (the weights_sha256 of the model it was trained from, "
        "under the update's hash, BLAKE3 or SHA-256)"
    )  # fmt: skip
    parser.set_defaults(handler=_verify)


def _keygen_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "keygen",
        help="write an Ed25519 identity key pair",
        description="Write an Ed25519 signing key pair as PEM: NAME.key (PKCS#8, "
        "mode 0600) and NAME.pub (SubjectPublicKeyInfo), and print the "
        "fingerprint: hex SHA-256 of the raw 32-byte public key.",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="directory to write into "
        "(created 0700 if missing)"
    )  # fmt: skip
    parser.add_argument(
        "--name", default="identity", help="file name stem (default: identity)"
    )
    parser.add_argument("--force", action="store_true", help=_FORCE_HELP)
    parser.set_defaults(handler=_keygen)


def _certs_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "certs",
        help="create a development CA, server and client certificates",
        description="Create a development CA and ECDSA P-256 server and client "
        "certificates for TLS and mutual TLS: ca.pem, ca.key, server.pem, "
        "server.key, client.pem, client.key (keys mode 0600). For development "
        "and closed test beds; keep ca.key off the coordinator and the clients.",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="directory to write into "
        "(created 0700 if missing)"
    )  # fmt: skip
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="H",
        help="DNS name or IP address clients use to reach the coordinator; "
        "repeatable; localhost, 127.0.0.1 and ::1 are always included",
    )
    parser.add_argument(
        "--client-name",
        default="client",
        metavar="N",
        help="the client certificate's common name (default: client)",
    )
    parser.add_argument(
        "--days",
        type=int,
        default=DEFAULT_DAYS,
        metavar="D",
        help=f"validity of every certificate in days (default: {DEFAULT_DAYS})",
    )
    parser.add_argument(
        "--admin", action="store_true", help="also write admin.pem and "
        "admin.key (a client certificate with the admin role, SAN URI "
        "urn:fedgrpc:admin) and admin.token, for AdminService: "
        "`fedgrpc status` and the coordinator's admin_token_file",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help=_FORCE_HELP)
    parser.set_defaults(handler=_certs)


def _keygen(args: argparse.Namespace) -> int:
    key = PrivateKey.generate()
    files = save_key_pair(key, args.out, args.name, overwrite=args.force)
    sys.stdout.write(
        f"private key: {files.private_key} (mode 0600; keep it secret)\n"
        f"public key:  {files.public_key}\n"
        f"fingerprint: {files.fingerprint}\n"
    )
    return 0


def _certs(args: argparse.Namespace) -> int:
    pki = write_dev_pki(
        args.out,
        hosts=args.host,
        client_name=args.client_name,
        days=args.days,
        overwrite=args.force,
        admin=args.admin,
    )
    sys.stdout.write(_certs_summary(pki) + _admin_summary(pki))
    return 0


def _admin_summary(pki: DevPki) -> str:
    if pki.admin_certificate is None:
        return ""
    return (
        f"admin certificate:  {pki.admin_certificate} (admin role; key "
        f"{pki.admin_key}, mode 0600)\n"
        f"admin token:        {pki.admin_token} (mode 0600)\n"
        "Read status:\n"
        f"  fedgrpc serve ... --admin-token-file {pki.admin_token}\n"
        f"  fedgrpc status --target HOST:PORT --tls-ca {pki.ca_certificate} "
        f"--admin-token-file {pki.admin_token}\n"
        f"  (or --tls-cert {pki.admin_certificate} --tls-key {pki.admin_key} "
        "under mutual TLS)\n"
    )


def _verify(args: argparse.Namespace) -> int:
    from fedgrpc.wire.export import verify_export  # protobuf: only when verifying

    key = load_public_key(args.key) if args.key else None
    report = verify_export(args.update, args.hash, key)
    base = (args.base or "").lower()
    if report.ok and base and base != report.base_digest:
        sys.stdout.write(
            f"MISMATCH: {args.update}: the update signed base model digest "
            f"{report.base_digest or '-'} ({report.hash_algorithm}), not {base}\n"
        )
        return 1
    if not report.ok:
        sys.stdout.write(f"MISMATCH: {args.update}: {report.reason}\n")
        return 1
    sys.stdout.write(
        f"OK: {args.update} is update {report.update_sha256}\n"
        f"  client {report.client_id}, round {report.round_id}, {report.chunks} "
        f"chunks, {report.payload_bytes} payload bytes, hashed with "
        f"{report.hash_algorithm}, signed by key {report.key_sha256}\n"
        f"  based on model version {report.base_version}, whose "
        f"{report.hash_algorithm} digest it signed: {report.base_digest or '-'}\n"
    )
    return 0


def _certs_summary(pki: DevPki) -> str:
    sha = pki.fingerprints
    return (
        f"CA certificate:     {pki.ca_certificate} (sha256 {sha['ca.pem']})\n"
        f"CA key:             {pki.ca_key} (mode 0600; keep it off the "
        "coordinator and the clients)\n"
        f"server certificate: {pki.server_certificate} (sha256 "
        f"{sha['server.pem']}) for {', '.join(pki.server_hosts)}\n"
        f"server key:         {pki.server_key} (mode 0600)\n"
        f"client certificate: {pki.client_certificate} (sha256 "
        f"{sha['client.pem']}) for {pki.client_name}\n"
        f"client key:         {pki.client_key} (mode 0600)\n"
        f"valid until:        {pki.not_after:%Y-%m-%d %H:%M} UTC\n"
        "\nServe with mutual TLS:\n"
        f"  fedgrpc serve --tls-cert {pki.server_certificate} --tls-key "
        f"{pki.server_key} --tls-client-ca {pki.ca_certificate}\n"
        "Connect a client:\n"
        f'  ClientConfig(tls_ca="{pki.ca_certificate}", '
        f'tls_cert="{pki.client_certificate}", tls_key="{pki.client_key}")\n'
    )
