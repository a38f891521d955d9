"""AES-256-GCM envelopes for the Shamir shares that clients send each other.

Shares travel through the coordinator (clients never connect to each other),
so each one is sealed to its recipient: the coordinator relays ciphertexts
it can neither read nor alter undetected. One envelope per (sender,
recipient) carries the recipient's share of both of the sender's secrets:

    plaintext  = x (4 bytes, big-endian) || y of the mask-key share (33 bytes)
                 || y of the self-mask-seed share (33 bytes)        70 bytes
    envelope   = nonce (12 random bytes) || AES-GCM(plaintext) || tag (16)
                                                                     98 bytes

The key (`agreement.share_key`) is specific to the round and the direction,
and the associated data binds session, round, sender and recipient
(`transcript.SHARE_AAD`), so an envelope replayed into another round, to
another recipient or under another sender's name fails authentication. The
random nonce is belt and braces: each key seals exactly one message.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedgrpc.secagg import shamir, transcript
from fedgrpc.secagg.agreement import RandomBytes
from fedgrpc.secagg.errors import InconsistentSharesError, TamperedShareError

NONCE_BYTES = 12
TAG_BYTES = 16
_ID_BYTES = 4
PLAINTEXT_BYTES = _ID_BYTES + 2 * shamir.ELEMENT_BYTES
ENVELOPE_BYTES = NONCE_BYTES + PLAINTEXT_BYTES + TAG_BYTES
"""98: the bytes one client sends per neighbour in the share-keys phase."""


@dataclass(frozen=True, slots=True)
class SharePair:
    """A holder's shares of one owner's two secrets (same id x for both)."""

    mask_key: shamir.Share
    """Share of the owner's X25519 mask private key (revealed if it dropped)."""
    self_seed: shamir.Share
    """Share of the owner's self-mask seed b (revealed if it survived)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """Who sealed it for whom, in which round: the AAD, minus the domain."""

    session_id: bytes
    round_id: int
    sender: str
    recipient: str

    def aad(self) -> bytes:
        """The associated data AES-GCM authenticates with the ciphertext."""
        return transcript.pair_binding(
            transcript.SHARE_AAD,
            self.session_id,
            self.round_id,
            self.sender,
            self.recipient,
        )


def seal(
    pair: SharePair, key: bytes, envelope: Envelope, random_bytes: RandomBytes
) -> bytes:
    """Encrypt one holder's shares; returns the 98-byte envelope."""
    if pair.mask_key.x != pair.self_seed.x:
        raise ValueError("both shares in an envelope must belong to one holder id")
    plaintext = (
        pair.mask_key.x.to_bytes(_ID_BYTES, "big")
        + shamir.element_to_bytes(pair.mask_key.y)
        + shamir.element_to_bytes(pair.self_seed.y)
    )
    nonce = random_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, envelope.aad())


def open_sealed(data: bytes, key: bytes, envelope: Envelope) -> SharePair:
    """Decrypt and parse an envelope sealed by `seal` under the same binding.

    Raises:
        TamperedShareError: wrong length, failed authentication (altered bytes,
            another round, sender or recipient), or values outside the field.
    """
    if len(data) != ENVELOPE_BYTES:
        raise TamperedShareError(
            f"share envelope from {envelope.sender} has {len(data)} bytes, "
            f"expected {ENVELOPE_BYTES}"
        )
    nonce, body = data[:NONCE_BYTES], data[NONCE_BYTES:]
    try:
        plaintext = AESGCM(key).decrypt(nonce, body, envelope.aad())
    except InvalidTag as exc:
        raise TamperedShareError(
            f"share envelope from {envelope.sender} to {envelope.recipient} fails "
            "authentication: altered in transit, or sealed for another round or pair"
        ) from exc
    x = int.from_bytes(plaintext[:_ID_BYTES], "big")
    split = _ID_BYTES + shamir.ELEMENT_BYTES
    try:
        key_y = shamir.element_from_bytes(plaintext[_ID_BYTES:split])
        seed_y = shamir.element_from_bytes(plaintext[split:])
    except InconsistentSharesError as exc:
        raise TamperedShareError(f"{envelope.sender} sealed a malformed share") from exc
    return SharePair(shamir.Share(x, key_y), shamir.Share(x, seed_y))
