"""X25519 + HKDF derivations and AES-GCM share envelopes (real crypto)."""

from __future__ import annotations

import pytest

from fedgrpc.secagg import PeerKeyError, TamperedShareError
from fedgrpc.secagg.agreement import (
    PairContext,
    RoundKeys,
    mask_seed,
    public_bytes,
    share_key,
)
from fedgrpc.secagg.sealing import (
    ENVELOPE_BYTES,
    Envelope,
    SharePair,
    open_sealed,
    seal,
)
from fedgrpc.secagg.shamir import Share
from tests.unit.secagg._federation import SESSION, seeded_bytes

ALICE, BOB = RoundKeys.generate(seeded_bytes(1)), RoundKeys.generate(seeded_bytes(2))


def _pair(me: str, peer: str, round_id: int = 3, session: bytes = SESSION):
    return PairContext(session, round_id, me, peer)


def test_both_ends_derive_the_same_mask_seed() -> None:
    a = mask_seed(ALICE.mask, public_bytes(BOB.mask), _pair("a", "b"), me_first=True)
    b = mask_seed(BOB.mask, public_bytes(ALICE.mask), _pair("b", "a"), me_first=False)

    assert a == b
    assert len(a) == 32


def test_mask_seed_is_bound_to_session_round_and_pair_order() -> None:
    bob = public_bytes(BOB.mask)
    base = mask_seed(ALICE.mask, bob, _pair("a", "b"), me_first=True)

    others = {
        mask_seed(ALICE.mask, bob, _pair("a", "b", round_id=4), me_first=True),
        mask_seed(ALICE.mask, bob, _pair("a", "b", session=b"other"), me_first=True),
        mask_seed(ALICE.mask, bob, _pair("a", "b"), me_first=False),
        mask_seed(ALICE.mask, bob, _pair("a", "c"), me_first=True),
    }

    assert base not in others
    assert len(others) == 4


def test_share_keys_are_per_direction_and_separate_from_mask_seeds() -> None:
    bob_enc = public_bytes(BOB.encryption)
    alice_enc = public_bytes(ALICE.encryption)

    a_to_b = share_key(ALICE.encryption, bob_enc, _pair("a", "b"), sending=True)
    b_from_a = share_key(BOB.encryption, alice_enc, _pair("b", "a"), sending=False)
    b_to_a = share_key(BOB.encryption, alice_enc, _pair("b", "a"), sending=True)

    assert a_to_b == b_from_a
    assert a_to_b != b_to_a
    assert a_to_b != mask_seed(ALICE.encryption, bob_enc, _pair("a", "b"), True)


def test_a_low_order_peer_key_is_refused() -> None:
    with pytest.raises(PeerKeyError, match="no key agreement with b"):
        mask_seed(ALICE.mask, bytes(32), _pair("a", "b"), me_first=True)
    with pytest.raises(PeerKeyError, match="31 bytes"):
        mask_seed(ALICE.mask, bytes(31), _pair("a", "b"), me_first=True)


KEY = bytes(range(32))
PAIR = SharePair(Share(4, 123), Share(4, 2**256 + 5))
ENVELOPE = Envelope(SESSION, 3, "a", "b")


def test_envelope_round_trips() -> None:
    sealed = seal(PAIR, KEY, ENVELOPE, seeded_bytes(5))

    assert len(sealed) == ENVELOPE_BYTES == 98
    assert open_sealed(sealed, KEY, ENVELOPE) == PAIR


@pytest.mark.parametrize(
    "binding",
    [
        Envelope(SESSION, 4, "a", "b"),
        Envelope(b"other", 3, "a", "b"),
        Envelope(SESSION, 3, "c", "b"),
        Envelope(SESSION, 3, "a", "c"),
    ],
)
def test_envelope_replayed_under_another_binding_is_rejected(binding) -> None:
    sealed = seal(PAIR, KEY, ENVELOPE, seeded_bytes(6))

    with pytest.raises(TamperedShareError, match="fails authentication"):
        open_sealed(sealed, KEY, binding)


@pytest.mark.parametrize("offset", [0, 11, 12, 50, 97])
def test_any_flipped_byte_is_rejected(offset: int) -> None:
    sealed = bytearray(seal(PAIR, KEY, ENVELOPE, seeded_bytes(7)))
    sealed[offset] ^= 0x01

    with pytest.raises(TamperedShareError):
        open_sealed(bytes(sealed), KEY, ENVELOPE)


def test_truncated_envelope_is_rejected() -> None:
    sealed = seal(PAIR, KEY, ENVELOPE, seeded_bytes(8))

    with pytest.raises(TamperedShareError, match="97 bytes"):
        open_sealed(sealed[:-1], KEY, ENVELOPE)
