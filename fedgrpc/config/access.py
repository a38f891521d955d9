"""Who may connect, join and read: a section of `CoordinatorConfig`.

TLS, the coordinator's identity, enrollment and update signatures. A mixin
so TOML keys and `--flags` stay flat; `CoordinatorConfig` inherits it and
calls `_check_access` from its `__post_init__`. Not slotted: slotted
dataclasses cannot be combined as several bases.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fedgrpc.config.files import check_readable as _check_readable
from fedgrpc.config.files import check_tls_pair as _check_tls_pair
from fedgrpc.errors import check_config as _check

UpdateSignatures = Literal["required", "off"]
UpdateHash = Literal["blake3", "sha256"]
UPDATE_HASHES: tuple[UpdateHash, ...] = ("blake3", "sha256")
AdminAccess = Literal["auto", "credential", "loopback", "open"]
ADMIN_ACCESS_MODES: tuple[AdminAccess, ...] = ("auto", "credential", "loopback", "open")


@dataclass(frozen=True, kw_only=True)
class AccessSettings:
    """Transport security, identity and enrollment; see `CoordinatorConfig`."""

    tls_cert: str = ""
    """PEM certificate chain to serve TLS with (needs `tls_key`); "" serves
    plaintext, fine on loopback only. `fedgrpc certs` makes a development one."""
    tls_key: str = ""
    """PEM private key of `tls_cert` (unencrypted; keep the file 0600)."""
    tls_client_ca: str = ""
    """PEM CA certificate(s); set, clients must present a certificate signed by
    one of them (mutual TLS) or the handshake is refused. Needs `tls_cert`."""
    identity_key: str = ""
    """The coordinator's Ed25519 private key (PEM, `fedgrpc keygen`): signs every
    model it sends; clients pin its public half. Required with
    `allowed_client_keys`; "" (open enrollment only) uses a throwaway key."""
    allowed_client_keys: str = ""
    """Who may Join: a directory of `*.pub` files, or a file of PEM public keys
    and/or 64-hex fingerprints (see `fedgrpc.crypto.allowlist`)."""
    open_enrollment: bool = False
    """Let any key Join (each still proves it holds its key and signs its
    updates). For local simulation and tests; logged as a warning at start.
    With neither this nor `allowed_client_keys` nobody could join, so
    `fedgrpc serve` refuses to start."""
    update_signatures: UpdateSignatures = "required"
    """`required`: every update header, chunk and commit must verify under the
    client's key before it counts. `off` (only with `open_enrollment`): no
    hashing or verification, to measure what signing costs (bench/signing.py)."""
    sign_chunks: str = "auto"
    """`auto` (default): clients sign the update header and commit only; each
    chunk carries its payload digest and chain link, checked on arrival, and
    the commit's signature covers the chain. Safe because every update is
    staged apart until its commit verifies (no unverified byte reaches the
    sum); saves one Ed25519 verify per chunk (~0.15-0.2 ms per MiB). With
    secure aggregation chunks are always signed. `always`: every chunk too."""
    update_hash: UpdateHash = "blake3"
    """The hash of update payload digests and signature chains, and of the
    model digests each client pulls (the name predates the latter). `blake3`
    (default): clients that offer BLAKE3 at Join use it (~2.5x faster than
    SHA-256), older ones SHA-256. `sha256`: every update and model digest
    uses SHA-256 and a BLAKE3 update is refused (INVALID_ARGUMENT), for runs
    held to FIPS algorithms (Ed25519 is FIPS 186-5, BLAKE3 is in no FIPS
    standard)."""

    admin_token_file: str = ""
    """A file holding the admin token (one line, at least 16 characters;
    `fedgrpc certs --admin` writes one): AdminService callers that send
    it as `authorization: Bearer <token>` metadata may read status. Keep the
    file 0600; the token is never logged."""
    admin_access: AdminAccess = "auto"
    """Who may call AdminService (GetStatus shows client ids, names, key
    fingerprints, losses and the round nonce). `credential`: only callers
    with the admin token or, under mutual TLS, a client certificate with the
    admin role (SAN URI `urn:fedgrpc:admin`, `fedgrpc certs --admin`).
    `loopback`: those, and any caller on a loopback address. `open`: anyone
    (warned at start). `auto` (default): `credential` when `admin_token_file`
    is set, else `loopback`, so a local `fedgrpc status` keeps working and a
    remote reader needs a credential. Health is always open."""
    reflection: bool = False
    """Serve gRPC server reflection (for grpcurl without .proto files). Off by
    default: the protos are public (`protos/`, `grpcurl -import-path protos
    -proto fedgrpc/v1/admin.proto`), and a production coordinator need not
    offer one more unauthenticated streaming RPC."""

    def update_hash_for(self, offered: Collection[str]) -> UpdateHash:
        """The hash a client that offered `offered` at Join must use.

        BLAKE3 only when the run allows it and the client can; SHA-256, which
        every client speaks, otherwise (negotiated per client, so a run can
        mix new Python clients with older or SHA-256-only ones).
        """
        if self.update_hash == "blake3" and "blake3" in offered:
            return "blake3"
        return "sha256"

    @property
    def admin_mode(self) -> AdminAccess:
        """`admin_access` with `auto` resolved (see there)."""
        if self.admin_access != "auto":
            return self.admin_access
        return "credential" if self.admin_token_file else "loopback"

    def _check_access(self) -> None:
        """Files readable, pairs complete, nobody let in unverified."""
        _check_tls_pair(self.tls_cert, self.tls_key)
        _check(not self.tls_client_ca or bool(self.tls_cert), "tls_client_ca",
               self.tls_client_ca, "tls_cert and tls_key set too (mutual TLS is "
               "TLS first)")  # fmt: skip
        _check_readable(tls_cert=self.tls_cert, tls_key=self.tls_key,
                        tls_client_ca=self.tls_client_ca)  # fmt: skip
        _check(self.update_signatures in ("required", "off"), "update_signatures",
               self.update_signatures, "required or off")  # fmt: skip
        _check(self.sign_chunks in ("auto", "always"), "sign_chunks",
               self.sign_chunks, "auto or always")  # fmt: skip
        _check(self.update_hash in UPDATE_HASHES, "update_hash", self.update_hash,
               " | ".join(UPDATE_HASHES))  # fmt: skip
        _check(self.update_signatures == "required" or self.open_enrollment,
               "update_signatures", self.update_signatures, "required unless "
               "open_enrollment is on: a coordinator with an allowed-keys list "
               "always verifies updates")  # fmt: skip
        _check(not self.allowed_client_keys or not self.open_enrollment,
               "open_enrollment", self.open_enrollment, "false when "
               "allowed_client_keys is set (choose one)")  # fmt: skip
        _check(not self.allowed_client_keys or bool(self.identity_key),
               "identity_key", self.identity_key, "a key file (`fedgrpc keygen`) "
               "when allowed_client_keys is set: clients pin the coordinator's "
               "key, so it must survive restarts")  # fmt: skip
        _check_readable(identity_key=self.identity_key,
                        admin_token_file=self.admin_token_file)  # fmt: skip
        _check(self.admin_access in ADMIN_ACCESS_MODES, "admin_access",
               self.admin_access, " | ".join(ADMIN_ACCESS_MODES))  # fmt: skip
        _check(self.admin_access != "credential" or bool(self.admin_token_file)
               or bool(self.tls_client_ca), "admin_access", self.admin_access,
               "credential only with admin_token_file or tls_client_ca set "
               "(else no caller could ever read status)")  # fmt: skip
        if self.allowed_client_keys and not Path(self.allowed_client_keys).is_dir():
            _check_readable(allowed_client_keys=self.allowed_client_keys)
