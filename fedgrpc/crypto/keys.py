"""Signing identities: generate, serialise, fingerprint, sign and verify.

A client is known to the federation by the public half of a signing key:
Join will prove possession of it, an allowed-keys list will name it, and
every chunk header will be signed with it (DESIGN.md step 5). This module is
the only code that touches that key material; the rest of fedgrpc calls
`PrivateKey.sign` and `PublicKey.verify`, never `cryptography` directly.

Algorithm agility: each key carries its `algorithm` name ("ed25519" today)
and the wire will carry that name next to keys and signatures, so ML-DSA-44
can become a second `SignatureAlgorithm` without changing any caller.

Keys serialise to PEM, readable by `openssl pkey`: the private key as
unencrypted PKCS#8, the public key as SubjectPublicKeyInfo. Nothing here
touches the disk; `files.save_key_pair` writes them (private key 0600).

Fingerprint: lowercase hex SHA-256 of the raw public key (the 32 bytes
Ed25519 puts on the wire), 64 characters. Hex rather than base64url because
it compares case-insensitively, survives any copy and paste, and its first 8
characters are the short form logs use (STYLE.md 3.9). Check one by hand:
`openssl pkey -pubin -in NAME.pub -outform DER | tail -c 32 | sha256sum`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedgrpc.errors import BadSignatureError, InvalidKeyError

SignatureAlgorithm = Literal["ed25519"]
"""Names of the signature algorithms an identity may use; ML-DSA-44 comes next."""
SIGNATURE_ALGORITHMS: tuple[SignatureAlgorithm, ...] = ("ed25519",)
ED25519_PUBLIC_KEY_BYTES = 32
SHORT_FINGERPRINT_CHARS = 8
"""Hex characters of a fingerprint shown in logs: 32 bits tell keys apart in a
log line; allowed-keys lists must use the full 64."""
_UNKNOWN_KEY_TYPE = (
    "not a key of a signature algorithm fedgrpc knows "
    f"({', '.join(SIGNATURE_ALGORITHMS)}); make one with `fedgrpc keygen`"
)


def fingerprint(raw_public_key: bytes) -> str:
    """Lowercase hex SHA-256 of a raw public key (64 characters)."""
    return hashlib.sha256(raw_public_key).hexdigest()


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A public signing key: the algorithm's name and its raw bytes.

    Plain data, safe to log (`short_fingerprint`), hash and compare.
    """

    algorithm: SignatureAlgorithm
    raw: bytes
    """32 bytes for Ed25519 (RFC 8032), as sent on the wire."""
    _key: ed25519.Ed25519PublicKey = field(
        init=False, repr=False, compare=False, hash=False
    )
    """The parsed key, kept so each of a push's ~1,000 verifications skips parsing."""

    def __post_init__(self) -> None:
        if self.algorithm not in SIGNATURE_ALGORITHMS:
            raise InvalidKeyError(
                f"unknown signature algorithm {self.algorithm!r}; fedgrpc knows "
                f"{', '.join(SIGNATURE_ALGORITHMS)}"
            )
        if len(self.raw) != ED25519_PUBLIC_KEY_BYTES:
            raise InvalidKeyError(
                f"an ed25519 public key has {ED25519_PUBLIC_KEY_BYTES} bytes, "
                f"got {len(self.raw)}"
            )
        object.__setattr__(
            self, "_key", ed25519.Ed25519PublicKey.from_public_bytes(self.raw)
        )

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of `raw` (see the module docstring)."""
        return fingerprint(self.raw)

    @property
    def short_fingerprint(self) -> str:
        """The first 8 hex characters of `fingerprint`, for log lines."""
        return self.fingerprint[:SHORT_FINGERPRINT_CHARS]

    def verify(self, signature: bytes, message: bytes) -> None:
        """Check that `signature` is this key's signature of `message`.

        Raises:
            BadSignatureError: it is not (wrong key, altered message or
                signature, wrong length), naming this key's short fingerprint.
        """
        try:
            self._key.verify(signature, message)
        except InvalidSignature as exc:
            raise BadSignatureError(
                f"{self.algorithm} signature does not verify under key "
                f"{self.short_fingerprint}: the message or signature was altered, "
                "or another key signed it"
            ) from exc

    def to_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`)."""
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def from_pem(cls, data: bytes) -> PublicKey:
        """Parse SubjectPublicKeyInfo PEM.

        Raises:
            InvalidKeyError: not PEM, or a key of an algorithm fedgrpc lacks.
        """
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise InvalidKeyError(f"not a PEM public key: {exc}") from exc
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise InvalidKeyError(_UNKNOWN_KEY_TYPE)
        raw = key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls("ed25519", raw)


class PrivateKey:
    """A private signing key. Its repr shows the fingerprint, never the key.

    Thread safety: immutable; `sign` may be called from any thread.
    """

    __slots__ = ("_key", "public_key")

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = PublicKey("ed25519", raw)

    @classmethod
    def generate(cls, algorithm: SignatureAlgorithm = "ed25519") -> PrivateKey:
        """A fresh key from the operating system's CSPRNG."""
        if algorithm not in SIGNATURE_ALGORITHMS:
            raise InvalidKeyError(f"unknown signature algorithm {algorithm!r}")
        return cls(ed25519.Ed25519PrivateKey.generate())

    @property
    def algorithm(self) -> SignatureAlgorithm:
        """The signature algorithm's name, as the wire will carry it."""
        return self.public_key.algorithm

    def sign(self, message: bytes) -> bytes:
        """The signature of `message` (64 bytes for Ed25519; deterministic)."""
        return self._key.sign(message)

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`). Keep it 0600."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, data: bytes) -> PrivateKey:
        """Parse unencrypted PKCS#8 PEM.

        Raises:
            InvalidKeyError: not PEM, encrypted, or not a signing key fedgrpc
                knows (the message never quotes the key).
        """
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:  # TypeError: it is encrypted
            raise InvalidKeyError(f"not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise InvalidKeyError(_UNKNOWN_KEY_TYPE)
        return cls(key)

    def __repr__(self) -> str:
        return (
            f"PrivateKey(algorithm={self.algorithm!r}, "
            f"fingerprint={self.public_key.short_fingerprint!r})"
        )
