"""Canonical bytes that secure aggregation signs, authenticates or derives keys from.

Every signature, AES-GCM associated data and HKDF `info` in `fedgrpc.secagg`
is built here, so the bindings are in one place and a second implementation
(another language's client) has one spec to follow:

    frame(domain, field_1, ..., field_j) = concat over all of (len as 4-byte
    big-endian) || bytes

Strings are UTF-8, integers 8-byte big-endian, lists are a count followed by
their framed items. Length prefixes make the encoding injective: no two
different field tuples give the same bytes, so a signature over one context
can never be read as a signature over another. Each purpose has its own
domain string, so a value bound for one use (a mask seed) can never equal one
bound for another (a share-encryption key), even from the same secret.

Every binding includes the session id and the round id: keys, shares and
signatures from one round are useless in any other.
"""

from __future__ import annotations

from collections.abc import Sequence

DOMAIN_PREFIX = b"fedgrpc.secagg.v1/"
ADVERTISE = DOMAIN_PREFIX + b"advertise-keys"
"""A client's signature over its two round X25519 public keys."""
MASK_SEED = DOMAIN_PREFIX + b"pairwise-mask-seed"
"""HKDF info for the pairwise mask seed of an unordered pair (lower index first)."""
SHARE_KEY = DOMAIN_PREFIX + b"share-encryption-key"
"""HKDF info for the AES-GCM key of shares sent from one client to another."""
SHARE_AAD = DOMAIN_PREFIX + b"share-ciphertext"
"""AES-GCM associated data of an encrypted share bundle."""
SURVIVORS_CLIENT = DOMAIN_PREFIX + b"survivors/client"
"""A client's consistency-check signature over the survivor list."""
SURVIVORS_SERVER = DOMAIN_PREFIX + b"survivors/server"
"""The coordinator's signature over the survivor list it announces."""


def frame(*fields: bytes) -> bytes:
    """Concatenate length-prefixed fields (4-byte big-endian lengths)."""
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def u64(value: int) -> bytes:
    """An unsigned integer as 8 big-endian bytes."""
    return value.to_bytes(8, "big")


def text(value: str) -> bytes:
    """A string as UTF-8."""
    return value.encode("utf-8")


def id_list(ids: Sequence[str]) -> bytes:
    """A list of client ids: the count, then each id framed."""
    return u64(len(ids)) + frame(*(text(i) for i in ids))


def round_context(domain: bytes, session_id: bytes, round_id: int) -> bytes:
    """The prefix every binding starts with: purpose, session, round."""
    return frame(domain, session_id, u64(round_id))


def advertisement(
    session_id: bytes, round_id: int, client: str, enc_key: bytes, mask_key: bytes
) -> bytes:
    """What a client signs when it advertises its round keys."""
    head = round_context(ADVERTISE, session_id, round_id)
    return head + frame(text(client), enc_key, mask_key)


def pair_binding(
    domain: bytes, session_id: bytes, round_id: int, first: str, second: str
) -> bytes:
    """Context bound to an ordered pair of clients (HKDF info, AES-GCM AAD)."""
    return round_context(domain, session_id, round_id) + frame(
        text(first), text(second)
    )


def survivors(
    domain: bytes, session_id: bytes, round_id: int, ids: Sequence[str]
) -> bytes:
    """What clients (and the coordinator) sign in the consistency check."""
    return round_context(domain, session_id, round_id) + id_list(ids)
