"""The client's identity and its trust in the coordinator.

A client signs with `ClientConfig.identity_key`, or with a throwaway key
made at start (only an `open_enrollment` coordinator admits those). It
trusts the coordinator key `ClientConfig.coordinator_key` pins, or else the
key the coordinator presents at its first Join (trust on first use, logged
with the fingerprint so an operator can compare); from then on every model
must carry that key's signature, so a server in the middle can neither
feed the client other weights nor reuse its signed Join elsewhere.

No grpc here: `link` does the calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgrpc.config import ClientConfig
from fedgrpc.crypto.files import load_identity_option, load_public_key
from fedgrpc.crypto.keys import PrivateKey, PublicKey
from fedgrpc.errors import ConfigError, IdentityFileError, UntrustedCoordinatorError
from fedgrpc.log import get_logger

log = get_logger(__name__)
FINGERPRINT_CHARS = 64


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """The key this client signs with, and whether it was made up on the spot."""

    key: PrivateKey
    ephemeral: bool


def load_client_identity(config: ClientConfig) -> ClientIdentity:
    """`config.identity_key`, or a throwaway key when it is unset.

    Raises:
        ConfigError: the key file is unreadable or not an Ed25519 PEM key.
    """
    if not config.identity_key:
        key = PrivateKey.generate()
        log.info(
            "client_identity", key=key.public_key.short_fingerprint, ephemeral=True
        )
        return ClientIdentity(key, ephemeral=True)
    key = load_identity_option(config.identity_key)
    log.info("client_identity", key=key.public_key.short_fingerprint, ephemeral=False)
    return ClientIdentity(key, ephemeral=False)


def pinned_fingerprint(config: ClientConfig) -> str | None:
    """The coordinator fingerprint `config.coordinator_key` insists on, if any.

    Raises:
        ConfigError: the pin names a file that is not a PEM public key.
    """
    pin = config.coordinator_key
    if not pin:
        return None
    if len(pin) == FINGERPRINT_CHARS and all(
        c in "0123456789abcdefABCDEF" for c in pin
    ):
        return pin.lower()
    try:
        return load_public_key(pin).fingerprint
    except IdentityFileError as exc:
        raise ConfigError(f"coordinator_key={pin!r}: {exc}") from exc


def check_coordinator(key: PublicKey, pinned: str | None, target: str) -> None:
    """Accept the coordinator's key: it matches the pin, or (no pin) log it.

    Raises:
        UntrustedCoordinatorError: it does not match the pin.
    """
    if pinned is None:
        log.info("coordinator_key_trusted", peer=target, key=key.fingerprint)
        return
    if key.fingerprint != pinned:
        raise UntrustedCoordinatorError(
            f"the coordinator at {target} presented key {key.fingerprint}, but "
            f"ClientConfig.coordinator_key pins {pinned}: it may be an impostor, or "
            "its identity_key was replaced; check with the operator before "
            "updating the pin"
        )
