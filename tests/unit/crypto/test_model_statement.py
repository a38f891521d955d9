"""The model statement: SHA-256 bytes pinned from before BLAKE3, BLAKE3 tagged."""

from __future__ import annotations

import dataclasses

import pytest

from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.crypto.statements import ModelStatement, text
from fedgrpc.errors import BadSignatureError

STATEMENT = ModelStatement(
    run_id="run-7",
    model_version=12,
    round_id=11,
    model_spec_digest=bytes(range(32)),
    total_bytes=4096,
    weights_sha256=bytes(range(100, 132)),
)
# Produced by main before the weights hash existed (commit 4529a5c): clients
# and auditors older than this field verify exactly these bytes.
SHA256_VECTOR = (
    "16000000" "666564677270632e76312e4d6f64656c486561646572"  # domain
    "01000000" "01"  # version 1
    "07000000" "65643235353139"  # "ed25519"
    "05000000" "72756e2d37"  # run id
    "08000000" "0c00000000000000"  # model_version 12
    "08000000" "0b00000000000000"  # round_id 11
    "20000000" "000102030405060708090a0b0c0d0e0f"
    "101112131415161718191a1b1c1d1e1f"  # model_spec_digest
    "08000000" "0010000000000000"  # total_bytes 4096
    "20000000" "6465666768696a6b6c6d6e6f70717273"
    "7475767778797a7b7c7d7e7f80818283"  # weights digest
)  # fmt: skip


def test_a_sha256_model_statement_keeps_its_bytes_from_before_blake3() -> None:
    assert STATEMENT.hash_name == "sha256"  # the default: older coordinators
    assert STATEMENT.encode("ed25519").hex() == SHA256_VECTOR


def test_a_blake3_model_statement_appends_its_hash_and_signs_differently() -> None:
    blake3 = dataclasses.replace(STATEMENT, hash_name="blake3")
    encoded = blake3.encode("ed25519")
    assert encoded == bytes.fromhex(SHA256_VECTOR) + text("hash") + text("blake3")
    key = PrivateKey.generate()
    signature = key.sign(encoded)
    key.public_key.verify(signature, encoded)
    # The same digest claimed under SHA-256 is another statement.
    with pytest.raises(BadSignatureError):
        key.public_key.verify(signature, STATEMENT.encode("ed25519"))
