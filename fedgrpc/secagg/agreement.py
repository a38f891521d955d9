"""Per-round X25519 keys, their signed advertisement, and the secrets derived from them.

Each client makes two fresh X25519 key pairs per round (Bonawitz et al. 2017,
section 4, "c" and "s"):

- the *encryption* pair: with a peer's encryption key it yields the AES-GCM
  keys for the Shamir shares the two send each other through the
  coordinator;
- the *mask* pair: with a peer's mask key it yields the seed of the pairwise
  mask the two add with opposite signs.

Two pairs, not one with two HKDF labels, because when a client drops after
sharing, the survivors reveal shares of its *mask* private key so the
coordinator can remove its pairwise masks. Were that also the encryption
key, the coordinator could then decrypt every share the dropped client sent
or received, including the self-mask shares that protect it should it turn
out to have sent its input after all.

The public keys are advertised with a signature by the client's long-term
identity (Ed25519 today, `fedgrpc.crypto.PrivateKey`), and peers verify it
against the identity the coordinator registered at Join: otherwise the
coordinator could hand each client keys of its own and sit in the middle,
stripping every mask. secagg may not import `fedgrpc.crypto` (it is a leaf
package, tests/unit/test_layering.py), so identities enter as the two small
protocols below, which `PrivateKey` and `PublicKey` satisfy as they are.

Derivations (HKDF-SHA256, 32-byte output, no salt; `info` from `transcript`):
    mask seed(u, v)     = HKDF(X25519(s_u, S_v), MASK_SEED || session || round
                               || lower-index id || higher-index id)
    share key(u -> v)   = HKDF(X25519(c_u, C_v), SHARE_KEY || session || round
                               || sender id || recipient id)
The mask seed's pair is ordered by participant index so both ends derive the
same seed; the share key's pair is ordered by direction, so each key
encrypts exactly one message.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedgrpc.secagg import transcript
from fedgrpc.secagg.errors import PeerKeyError

X25519_KEY_BYTES = 32
SECRET_BYTES = 32
RandomBytes = Callable[[int], bytes]
"""Source of secret randomness: `os.urandom` unless a test injects a seeded one."""


class Signer(Protocol):
    """Signs with a long-term identity (`fedgrpc.crypto.PrivateKey` is one)."""

    def sign(self, message: bytes) -> bytes:
        """The signature of `message`."""
        ...


class SignatureVerifier(Protocol):
    """Verifies one identity's signatures (`fedgrpc.crypto.PublicKey` is one)."""

    def verify(self, signature: bytes, message: bytes) -> None:
        """Return if valid; raise `fedgrpc.errors.BadSignatureError` otherwise."""
        ...


def _raw(public: x25519.X25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def load_public(raw: bytes, owner: str) -> x25519.X25519PublicKey:
    """Parse a peer's 32-byte X25519 public key.

    Raises:
        PeerKeyError: wrong length (naming the owner).
    """
    if len(raw) != X25519_KEY_BYTES:
        raise PeerKeyError(
            f"{owner}'s X25519 key has {len(raw)} bytes, expected {X25519_KEY_BYTES}"
        )
    return x25519.X25519PublicKey.from_public_bytes(raw)


def private_from_bytes(raw: bytes) -> x25519.X25519PrivateKey:
    """An X25519 private key from 32 bytes (clamping is X25519's own)."""
    return x25519.X25519PrivateKey.from_private_bytes(raw)


def private_bytes(key: x25519.X25519PrivateKey) -> bytes:
    """The 32 raw bytes of an X25519 private key (what gets Shamir-shared)."""
    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def public_bytes(key: x25519.X25519PrivateKey) -> bytes:
    """The 32 raw bytes of the public half of `key`."""
    return _raw(key.public_key())


@dataclass(frozen=True, slots=True)
class RoundKeys:
    """A client's two fresh X25519 private keys for one round (never reused)."""

    encryption: x25519.X25519PrivateKey
    mask: x25519.X25519PrivateKey

    @classmethod
    def generate(cls, random_bytes: RandomBytes = os.urandom) -> RoundKeys:
        """Two key pairs from `random_bytes` (the OS CSPRNG by default)."""
        return cls(
            private_from_bytes(random_bytes(X25519_KEY_BYTES)),
            private_from_bytes(random_bytes(X25519_KEY_BYTES)),
        )

    def __repr__(self) -> str:
        return "RoundKeys(<secret>)"


def _agree(
    private: x25519.X25519PrivateKey, peer_public: bytes, peer: str, info: bytes
) -> bytes:
    """HKDF-SHA256(X25519(private, peer_public), info) -> 32 bytes.

    Raises:
        PeerKeyError: the peer's key is malformed or of small order (the
            shared secret would be all zeros, which cryptography refuses).
    """
    try:
        shared = private.exchange(load_public(peer_public, peer))
    except ValueError as exc:
        raise PeerKeyError(f"no key agreement with {peer}: {exc}") from exc
    kdf = HKDF(algorithm=hashes.SHA256(), length=SECRET_BYTES, salt=None, info=info)
    return kdf.derive(shared)


@dataclass(frozen=True, slots=True)
class PairContext:
    """Who agrees with whom, in which round: the binding of every derived secret."""

    session_id: bytes
    round_id: int
    me: str
    peer: str


def mask_seed(
    mask_key: x25519.X25519PrivateKey,
    peer_mask_public: bytes,
    pair: PairContext,
    me_first: bool,
) -> bytes:
    """The 32-byte pairwise mask seed; `me_first` if `me` has the lower index."""
    first, second = (pair.me, pair.peer) if me_first else (pair.peer, pair.me)
    info = transcript.pair_binding(
        transcript.MASK_SEED, pair.session_id, pair.round_id, first, second
    )
    return _agree(mask_key, peer_mask_public, pair.peer, info)


def share_key(
    encryption_key: x25519.X25519PrivateKey,
    peer_encryption_public: bytes,
    pair: PairContext,
    sending: bool,
) -> bytes:
    """The AES-256-GCM key for shares from sender to recipient.

    `sending` is True when `pair.me` is the sender (it encrypts), False when
    `pair.me` is the recipient (it decrypts): both ends bind (sender, recipient).
    """
    sender, recipient = (pair.me, pair.peer) if sending else (pair.peer, pair.me)
    info = transcript.pair_binding(
        transcript.SHARE_KEY, pair.session_id, pair.round_id, sender, recipient
    )
    return _agree(encryption_key, peer_encryption_public, pair.peer, info)
