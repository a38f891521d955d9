"""Who may connect, join and read: a section of `CoordinatorConfig`.

TLS, the coordinator's identity, enrollment and update signatures. A mixin
so TOML keys and `--flags` stay flat; `CoordinatorConfig` inherits it and
calls `_check_access` from its `__post_init__`. Not slotted: slotted
dataclasses cannot be combined as several bases.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fedgrpc.config.files import check_readable as _check_readable
from fedgrpc.config.files import check_tls_pair as _check_tls_pair
from fedgrpc.errors import check_config as _check

UpdateSignatures = Literal["required", "off"]


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
        _check_readable(identity_key=self.identity_key)
        if self.allowed_client_keys and not Path(self.allowed_client_keys).is_dir():
            _check_readable(allowed_client_keys=self.allowed_client_keys)
