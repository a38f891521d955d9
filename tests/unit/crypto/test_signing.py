"""Signed statements and the update chain, without any network."""

from __future__ import annotations

import dataclasses

import pytest

from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.crypto.signing import (
    ChunkProof,
    CommitProof,
    JoinStatement,
    UpdateSigner,
    UpdateStatement,
    UpdateVerifier,
    f32,
    f64,
    field,
    sha256,
    statement,
    u64,
)
from fedgrpc.errors import BadSignatureError, IncompleteUpdateError

KEY = PrivateKey.generate()
UPDATE = UpdateStatement(
    run_id="run1",
    round_id=5,
    round_nonce=b"n" * 16,
    client_id="c00002",
    base_version=4,
    base_model_sha256=b"b" * 32,
    kind=1,
    codec=1,
    values=1,
    density=0.0,
    num_coordinates=12,
    num_samples=3,
    train_loss=0.25,
)
PAYLOADS = [bytes([i]) * 16 for i in range(3)]  # 3 chunks of 4 float32s


def _signed() -> tuple[UpdateSigner, list[ChunkProof], CommitProof]:
    signer = UpdateSigner(KEY, UPDATE)
    proofs = [
        signer.sign_chunk(seq, 4 * seq, 4, sha256(payload))
        for seq, payload in enumerate(PAYLOADS)
    ]
    return signer, proofs, signer.commit()


def _verify_all(verifier: UpdateVerifier, proofs: list[ChunkProof]) -> None:
    for seq, (payload, proof) in enumerate(zip(PAYLOADS, proofs, strict=True)):
        verifier.verify_chunk(seq, 4 * seq, 4, sha256(payload), proof)


def test_statement_layout_is_pinned() -> None:
    # Other languages (client/node/signing.js) must produce these bytes exactly.
    encoded = statement("d", "ed25519", u64(1), field(b"ab"), f32(0.5))
    assert encoded.hex() == (
        "01000000" "64"  # domain "d"
        "01000000" "01"  # version 1
        "07000000" "65643235353139"  # "ed25519"
        "08000000" "0100000000000000"  # u64 1
        "02000000" "6162"  # b"ab"
        "04000000" "0000003f"  # float32 0.5
    )  # fmt: skip


def test_float_fields_round_like_protobuf_and_never_raise() -> None:
    assert f32(1e39) == f32(float("inf"))
    assert f32(-1e39) == f32(float("-inf"))


def test_a_signed_update_verifies_and_its_digest_is_the_chain_head() -> None:
    signer, proofs, commit = _signed()
    verifier = UpdateVerifier(KEY.public_key, UPDATE, signer.header_signature)
    _verify_all(verifier, proofs)
    digest = verifier.verify_commit(commit)
    assert digest == signer.chain == commit.chain_sha256
    assert proofs[0].prev_sha256 == sha256(UPDATE.encode("ed25519"))


@pytest.mark.parametrize(
    "change",
    [
        {"round_id": 6},
        {"round_nonce": b"m" * 16},
        {"run_id": "run2"},
        {"client_id": "c00003"},
        {"num_samples": 300},
        {"base_model_sha256": b"c" * 32},
        {"density": 0.5},
        {"shard": (1, 2)},
    ],
)
def test_any_changed_header_field_breaks_the_header_signature(
    change: dict[str, object],
) -> None:
    signer = UpdateSigner(KEY, UPDATE)
    altered = dataclasses.replace(UPDATE, **change)  # type: ignore[arg-type]
    with pytest.raises(BadSignatureError, match="header signature"):
        UpdateVerifier(KEY.public_key, altered, signer.header_signature)


def test_a_sharded_statement_binds_its_range_and_unsharded_bytes_stay() -> None:
    # Unsharded: exactly the bytes of clients older than the field.
    assert UPDATE.encode("ed25519").endswith(f32(0.25))
    sharded = dataclasses.replace(UPDATE, shard=(1, 3))
    assert sharded.encode("ed25519") == statement(
        "fedgrpc.v1.UpdateHeader", "ed25519", *_fields_of(UPDATE),
        field(b"shard"), u64(1), u64(3),
    )  # fmt: skip
    signer = UpdateSigner(KEY, sharded)
    for other in ((0, 3), (1, 2)):  # presented as another shard's range
        with pytest.raises(BadSignatureError, match="header signature"):
            UpdateVerifier(
                KEY.public_key,
                dataclasses.replace(sharded, shard=other),
                signer.header_signature,
            )


def _fields_of(update: UpdateStatement) -> tuple[bytes, ...]:
    """The unsharded statement's fields after domain and algorithm."""
    return (
        field(update.run_id.encode()), u64(update.round_id),
        field(update.round_nonce), field(update.client_id.encode()),
        u64(update.base_version), field(update.base_model_sha256),
        u64(update.kind), u64(update.codec), u64(update.values),
        f64(update.density), u64(update.num_coordinates),
        u64(update.num_samples), f32(update.train_loss),
    )  # fmt: skip


def test_another_key_cannot_pass_for_the_client() -> None:
    signer = UpdateSigner(PrivateKey.generate(), UPDATE)
    with pytest.raises(BadSignatureError, match="another key"):
        UpdateVerifier(KEY.public_key, UPDATE, signer.header_signature)


def test_tampered_payload_and_forged_signature_are_refused() -> None:
    signer, proofs, _ = _signed()
    verifier = UpdateVerifier(KEY.public_key, UPDATE, signer.header_signature)
    with pytest.raises(BadSignatureError, match="payload of chunk 0"):
        verifier.verify_chunk(0, 0, 4, sha256(b"x" * 16), proofs[0])
    rehashed = dataclasses.replace(proofs[0], payload_sha256=sha256(b"x" * 16))
    with pytest.raises(BadSignatureError, match="chunk 0 signature"):
        verifier.verify_chunk(0, 0, 4, sha256(b"x" * 16), rehashed)
    with pytest.raises(BadSignatureError, match="chunk 0 signature"):
        verifier.verify_chunk(0, 0, 5, sha256(PAYLOADS[0]), proofs[0])  # count
    # Refusals left the chain where it was: the genuine chunks still verify.
    _verify_all(verifier, proofs)


def test_missing_reordered_or_replayed_chunks_break_the_chain() -> None:
    signer, proofs, commit = _signed()
    verifier = UpdateVerifier(KEY.public_key, UPDATE, signer.header_signature)
    with pytest.raises(IncompleteUpdateError, match="does not continue its chain"):
        verifier.verify_chunk(1, 4, 4, sha256(PAYLOADS[1]), proofs[1])  # 0 missing
    # A chunk of the same client's update for another round does not link.
    other = UpdateSigner(KEY, dataclasses.replace(UPDATE, round_id=4))
    replayed = other.sign_chunk(0, 0, 4, sha256(PAYLOADS[0]))
    with pytest.raises(IncompleteUpdateError, match="replayed"):
        verifier.verify_chunk(0, 0, 4, sha256(PAYLOADS[0]), replayed)
    verifier.verify_chunk(0, 0, 4, sha256(PAYLOADS[0]), proofs[0])
    with pytest.raises(IncompleteUpdateError, match="2 chunks"):
        verifier.verify_commit(dataclasses.replace(commit, num_chunks=2))
    with pytest.raises(IncompleteUpdateError, match="chunks were lost"):
        verifier.verify_commit(commit)  # says 3, one arrived


def test_a_forged_commit_is_refused() -> None:
    signer, proofs, commit = _signed()
    verifier = UpdateVerifier(KEY.public_key, UPDATE, signer.header_signature)
    _verify_all(verifier, proofs)
    with pytest.raises(BadSignatureError, match="commit signature"):
        verifier.verify_commit(dataclasses.replace(commit, signature=b"\0" * 64))


def test_join_statement_binds_the_coordinator_key() -> None:
    client, coordinator = PrivateKey.generate(), PrivateKey.generate()
    join = JoinStatement(
        run_id="r",
        nonce=b"x" * 32,
        coordinator_key=coordinator.public_key,
        client_key=client.public_key,
        client_name="n",
        model_spec_digest=b"d" * 32,
    )
    signature = client.sign(join.encode())
    client.public_key.verify(signature, join.encode())
    elsewhere = dataclasses.replace(join, coordinator_key=client.public_key)
    with pytest.raises(BadSignatureError):
        client.public_key.verify(signature, elsewhere.encode())
