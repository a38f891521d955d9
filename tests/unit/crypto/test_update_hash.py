"""The update chain under BLAKE3 and SHA-256: pinned bytes, and the hash bound.

The vectors pin what client/node/signing.js must also produce (the Node
system test pushes BLAKE3 updates the Python coordinator verifies).
"""

from __future__ import annotations

import dataclasses

import pytest

from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.crypto.signing import (
    HASHERS,
    HashName,
    UpdateSigner,
    UpdateVerifier,
    blake3_digest,
    sha256,
    text,
)
from fedgrpc.errors import BadSignatureError
from tests.unit.crypto.test_signing import PAYLOADS, UPDATE

KEY = PrivateKey.generate()
BLAKE3_UPDATE = dataclasses.replace(UPDATE, hash_name="blake3")


def _chain(hash_name: HashName) -> tuple[UpdateSigner, list[bytes]]:
    """A signed 3-chunk update under `hash_name`; the chunk digests it signed."""
    signer = UpdateSigner(KEY, dataclasses.replace(UPDATE, hash_name=hash_name))
    digests = [HASHERS[hash_name](p) for p in PAYLOADS]
    for seq, digest in enumerate(digests):
        signer.sign_chunk(seq, 4 * seq, 4, digest)
    return signer, digests


def test_blake3_is_the_reference_blake3() -> None:
    # The BLAKE3 team's test vector for "abc" (32-byte output).
    assert blake3_digest(b"abc").hex() == (
        "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
    )
    assert blake3_digest(memoryview(b"xabcx")[1:4]) == blake3_digest(b"abc")


def test_the_header_statement_names_blake3_and_sha256_ones_are_unchanged() -> None:
    sha = UPDATE.encode("ed25519")
    blake = BLAKE3_UPDATE.encode("ed25519")

    # SHA-256: exactly the bytes of clients older than the choice.
    assert sha256(sha).hex() == (
        "3b146acda2431a91a881ba1b01f793b3fddf31b6d2f6f37b4dd995ef80fbcfc1"
    )
    # BLAKE3: the same bytes, then the tag "hash" and the name "blake3".
    assert blake[: len(sha)] == sha
    assert blake[len(sha) :] == text("hash") + text("blake3")
    assert blake[len(sha) :].hex() == "040000006861736806000000626c616b6533"


def test_a_blake3_chain_uses_blake3_for_every_link() -> None:
    signer, digests = _chain("blake3")
    verifier = UpdateVerifier(KEY.public_key, BLAKE3_UPDATE, signer.header_signature)
    head = blake3_digest(BLAKE3_UPDATE.encode("ed25519"))
    assert head.hex() == (
        "55c5dbae555bf2da91157ab7a692c8eaab5decf67a1108c41f33961413f5f171"
    )
    assert verifier.chain == head
    replay = UpdateSigner(KEY, BLAKE3_UPDATE)
    for seq, payload in enumerate(PAYLOADS):
        proof = replay.sign_chunk(seq, 4 * seq, 4, digests[seq])
        assert proof.prev_sha256 == verifier.chain  # BLAKE3 of the last statement
        verifier.verify_chunk(seq, 4 * seq, 4, verifier.hash(payload), proof)
    digest = verifier.verify_commit(signer.commit())
    assert digest == signer.chain
    assert digest != _chain("sha256")[0].chain


def test_the_header_signature_binds_the_hash() -> None:
    # Signed as BLAKE3, presented as SHA-256 (or the other way): refused.
    blake = UpdateSigner(KEY, BLAKE3_UPDATE)
    with pytest.raises(BadSignatureError, match="header signature"):
        UpdateVerifier(KEY.public_key, UPDATE, blake.header_signature)
    sha = UpdateSigner(KEY, UPDATE)
    with pytest.raises(BadSignatureError, match="header signature"):
        UpdateVerifier(KEY.public_key, BLAKE3_UPDATE, sha.header_signature)


def test_sha256_payload_digests_in_a_blake3_update_are_refused() -> None:
    signer = UpdateSigner(KEY, BLAKE3_UPDATE)
    proof = signer.sign_chunk(0, 0, 4, sha256(PAYLOADS[0]))  # the wrong hash
    verifier = UpdateVerifier(KEY.public_key, BLAKE3_UPDATE, signer.header_signature)
    with pytest.raises(BadSignatureError, match="does not match the BLAKE3"):
        verifier.verify_chunk(0, 0, 4, verifier.hash(PAYLOADS[0]), proof)
