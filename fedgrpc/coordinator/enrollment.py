"""Who may join, and who the coordinator is: challenges, join proofs, its own key.

Join is challenge-response. `GetJoinChallenge` hands out a random nonce
(single use, `CHALLENGE_TTL_S`), and the client signs a statement over it,
the run id, the coordinator's key, its own key, its name and its model spec
(`crypto.signing.JoinStatement`). Binding the coordinator's key into the
statement makes a captured Join useless anywhere else, and the nonce makes
it useless twice. Then the key must be allowed: listed in
`allowed_client_keys`, or anything under `open_enrollment`.

Plain Python (no grpc); the servicer translates. Every refusal is an
`UnknownClientError` (UNAUTHENTICATED) that names the client key by its
fingerprint, never the key itself.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fedgrpc.compress import format_codec
from fedgrpc.config import CoordinatorConfig
from fedgrpc.crypto.allowlist import AllowedKeys
from fedgrpc.crypto.files import load_identity_option
from fedgrpc.crypto.keys import PrivateKey, PublicKey
from fedgrpc.domain.requests import JoinInfo, wire_codec
from fedgrpc.errors import (
    BadSignatureError,
    ConfigError,
    IncompatibleClientError,
    InvalidKeyError,
    UnknownClientError,
)
from fedgrpc.log import get_logger
from fedgrpc.wire.signed import JoinProof, key_from_proto

log = get_logger(__name__)
CHALLENGE_TTL_S = 60.0
"""How long a Join challenge stays valid: ample for one round trip."""
MAX_OPEN_CHALLENGES = 10_000
"""Challenges kept at once; beyond it the oldest is dropped (bounds memory if
someone asks for challenges without ever joining)."""
CHALLENGE_NONCE_BYTES = 32


@dataclass(frozen=True, slots=True)
class Challenge:
    """A Join challenge as GetJoinChallenge returns it."""

    nonce: bytes
    expires_in_s: float


def load_identity(config: CoordinatorConfig) -> PrivateKey:
    """The coordinator's signing key: `identity_key`, or a throwaway one.

    Raises:
        ConfigError: `identity_key` is unreadable or not an Ed25519 PEM key.
    """
    if not config.identity_key:
        key = PrivateKey.generate()
        log.warning(
            "coordinator_identity_ephemeral",
            key=key.public_key.short_fingerprint,
            hint="set identity_key so clients can pin this coordinator",
        )
        return key
    return load_identity_option(config.identity_key)


def load_allowed_keys(config: CoordinatorConfig) -> AllowedKeys | None:
    """The allowed-keys list, or None under open enrollment.

    Raises:
        ConfigError: neither is configured (nobody could join), or the list
            is unusable (`AllowedKeys.from_path`).
    """
    if config.open_enrollment:
        log.warning(
            "open_enrollment",
            detail="any client key may join; meant for local simulation and tests",
        )
        return None
    if not config.allowed_client_keys:
        raise ConfigError(
            "no client could join: set allowed_client_keys (a directory of "
            "`fedgrpc keygen` .pub files, or a file of public keys or "
            "fingerprints), or open_enrollment = true (--open-enrollment) for "
            "local simulation"
        )
    allowed = AllowedKeys.from_path(config.allowed_client_keys)
    log.info("allowed_client_keys", source=allowed.source, keys=len(allowed))
    return allowed


def check_compatible(config: CoordinatorConfig, request: JoinInfo) -> None:
    """Refuse a joiner whose inner steps or codecs do not fit the federation.

    Raises:
        IncompatibleClientError: FAILED_PRECONDITION at Join, naming both sides.
    """
    if request.inner_steps and request.inner_steps != config.inner_steps:
        raise IncompatibleClientError(
            f"the client was configured with inner_steps={request.inner_steps} "
            f"but this federation runs inner_steps={config.inner_steps}; pass "
            "inner_steps=None to follow the coordinator"
        )
    wanted = request.requested_codec
    if wanted is not None and wanted != config.codec_config:
        raise IncompatibleClientError(
            f"the client was configured with compression {format_codec(wanted)} "
            f"but this federation uses {format_codec(config.codec_config)}; pass "
            "compression=None to follow the coordinator"
        )
    codec = wire_codec(config.codec_config)
    if codec not in request.supported_codecs:
        raise IncompatibleClientError(
            f"this federation sends updates as {codec} ({config.codec}) and the "
            f"client supports only {', '.join(request.supported_codecs) or 'none'}"
            "; upgrade the client"
        )


class Enrollment:
    """Issues Join challenges and checks Join proofs; holds the coordinator's key.

    Not thread-safe: the coordinator's event loop owns it.
    """

    def __init__(
        self,
        identity: PrivateKey,
        allowed: AllowedKeys | None,
        run_id: str,
        clock: Callable[[], float],
    ) -> None:
        self.identity = identity
        self.allowed = allowed
        self.run_id = run_id
        self.clock = clock
        self._challenges: OrderedDict[bytes, float] = OrderedDict()
        """nonce -> expiry (clock seconds), oldest first."""

    @property
    def public_key(self) -> PublicKey:
        """The coordinator's public key, announced at GetJoinChallenge and Join."""
        return self.identity.public_key

    @property
    def is_open(self) -> bool:
        """True when any key may join."""
        return self.allowed is None

    def challenge(self) -> Challenge:
        """A fresh single-use nonce, valid for CHALLENGE_TTL_S."""
        now = self.clock()
        while self._challenges:  # expiries grow with insertion: drop from the front
            oldest, expiry = next(iter(self._challenges.items()))
            if expiry > now and len(self._challenges) < MAX_OPEN_CHALLENGES:
                break
            del self._challenges[oldest]
        nonce = secrets.token_bytes(CHALLENGE_NONCE_BYTES)
        self._challenges[nonce] = now + CHALLENGE_TTL_S
        return Challenge(nonce, CHALLENGE_TTL_S)

    def admit(self, proof: JoinProof) -> PublicKey:
        """The client's key, once it is allowed and proven; consumes the nonce.

        Raises:
            UnknownClientError: no or malformed key, a key not allowed, an
                unknown, used or expired challenge, or a signature that does
                not verify.
        """
        if proof.client_key is None:
            raise UnknownClientError(
                "the Join request carries no client key (JoinRequest.client_key): "
                "this coordinator admits only clients that prove who they are; "
                "sign a GetJoinChallenge nonce as coordinator.proto describes"
            )
        try:
            key = key_from_proto(proof.client_key)
        except InvalidKeyError as exc:
            raise UnknownClientError(f"the client key is unusable: {exc}") from exc
        if self.allowed is not None and key not in self.allowed:
            raise UnknownClientError(
                f"client key {key.fingerprint} is not allowed to join: it is not "
                "in the coordinator's allowed_client_keys; "
                "ask the operator to add the client's .pub file or this fingerprint"
            )
        self._consume(proof.nonce)
        statement = proof.statement(self.run_id, self.public_key, key)
        try:
            key.verify(proof.signature, statement)
        except BadSignatureError as exc:
            raise UnknownClientError(
                f"the Join signature does not verify under client key "
                f"{key.short_fingerprint}: the client must sign the Join statement "
                "for this challenge, run and coordinator key with the private half "
                "of the key it presents"
            ) from exc
        return key

    def _consume(self, nonce: bytes) -> None:
        expiry = self._challenges.pop(nonce, None)
        if expiry is None or expiry <= self.clock():
            raise UnknownClientError(
                "the Join challenge is unknown, already used or expired (they are "
                f"single-use and live {CHALLENGE_TTL_S:g} s); call GetJoinChallenge "
                "again and Join with its nonce"
            )

    def sign(self, statement: bytes) -> bytes:
        """The coordinator's signature of `statement` (a model statement)."""
        return self.identity.sign(statement)
