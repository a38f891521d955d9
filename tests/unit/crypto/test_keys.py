"""Ed25519 identities: files, fingerprints, signatures (real keys, no mocks)."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fedgrpc.crypto import (
    PrivateKey,
    PublicKey,
    load_private_key,
    load_public_key,
    save_key_pair,
)
from fedgrpc.errors import BadSignatureError, IdentityFileError, InvalidKeyError

MESSAGE = b"fedgrpc.v1 chunk header: round 7, tensor 3, chunk 12"


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return PrivateKey.generate()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_saved_pair_loads_back_as_the_same_key(key: PrivateKey, tmp_path: Path) -> None:
    files = save_key_pair(key, tmp_path / "keys", "node-1")

    private = load_private_key(files.private_key)
    public = load_public_key(files.public_key)

    assert files.private_key == tmp_path / "keys" / "node-1.key"
    assert files.public_key == tmp_path / "keys" / "node-1.pub"
    assert public == key.public_key
    assert private.public_key == key.public_key
    key.public_key.verify(private.sign(MESSAGE), MESSAGE)
    assert files.private_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert files.public_key.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_fingerprint_is_hex_sha256_of_the_raw_public_key(
    key: PrivateKey, tmp_path: Path
) -> None:
    raw = key.public_key.raw
    pem = key.public_key.to_pem()
    files = save_key_pair(key, tmp_path)

    # The raw key is the last 32 bytes of the SubjectPublicKeyInfo DER, which is
    # what the documented openssl recipe hashes.
    der = serialization.load_pem_public_key(pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert len(raw) == 32
    assert der[-32:] == raw
    assert key.public_key.fingerprint == hashlib.sha256(raw).hexdigest()
    assert files.fingerprint == key.public_key.fingerprint
    assert load_public_key(files.public_key).fingerprint == files.fingerprint
    assert key.public_key.short_fingerprint == files.fingerprint[:8]
    assert PrivateKey.generate().public_key.fingerprint != files.fingerprint


def test_private_key_file_is_0600_and_public_key_0644(
    key: PrivateKey, tmp_path: Path
) -> None:
    files = save_key_pair(key, tmp_path / "new")

    assert _mode(files.private_key) == 0o600
    assert _mode(files.public_key) == 0o644
    assert _mode(tmp_path / "new") == 0o700
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [
        "identity.key",
        "identity.pub",
    ]  # no temporary files left behind


def test_existing_files_are_not_overwritten_and_nothing_is_written(
    key: PrivateKey, tmp_path: Path
) -> None:
    (tmp_path / "identity.pub").write_bytes(b"keep me")

    with pytest.raises(
        IdentityFileError, match=r"refusing to overwrite .*identity\.pub"
    ):
        save_key_pair(key, tmp_path)

    assert (tmp_path / "identity.pub").read_bytes() == b"keep me"
    assert not (tmp_path / "identity.key").exists()


def test_overwrite_replaces_both_files_and_keeps_0600(
    key: PrivateKey, tmp_path: Path
) -> None:
    old = save_key_pair(PrivateKey.generate(), tmp_path)
    (old.private_key).chmod(0o644)  # a mode someone loosened by hand

    new = save_key_pair(key, tmp_path, overwrite=True)

    assert load_public_key(new.public_key) == key.public_key
    assert load_private_key(new.private_key).public_key == key.public_key
    assert _mode(new.private_key) == 0o600


def test_output_path_that_is_a_file_is_a_clear_error(
    key: PrivateKey, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")

    with pytest.raises(IdentityFileError, match=r"not-a-dir.*not a directory"):
        save_key_pair(key, blocker)
    with pytest.raises(IdentityFileError, match="cannot create directory"):
        save_key_pair(key, blocker / "sub")


@pytest.mark.parametrize("name", ["", "../escape", ".hidden", "a/b", "x" * 65])
def test_key_name_must_be_a_plain_file_name(
    key: PrivateKey, tmp_path: Path, name: str
) -> None:
    with pytest.raises(IdentityFileError, match="key name"):
        save_key_pair(key, tmp_path, name)


def test_signature_verifies_and_is_64_bytes(key: PrivateKey) -> None:
    signature = key.sign(MESSAGE)

    key.public_key.verify(signature, MESSAGE)

    assert len(signature) == 64
    assert key.algorithm == key.public_key.algorithm == "ed25519"


@pytest.mark.parametrize("part", ["message", "signature", "truncated"])
def test_tampered_message_or_signature_fails(key: PrivateKey, part: str) -> None:
    signature = bytearray(key.sign(MESSAGE))
    message = bytearray(MESSAGE)
    if part == "message":
        message[10] ^= 1
    elif part == "signature":
        signature[0] ^= 1
    else:
        del signature[-1]

    with pytest.raises(BadSignatureError, match=key.public_key.short_fingerprint):
        key.public_key.verify(bytes(signature), bytes(message))


def test_signature_by_another_key_fails(key: PrivateKey) -> None:
    other = PrivateKey.generate()

    with pytest.raises(BadSignatureError, match="another key"):
        key.public_key.verify(other.sign(MESSAGE), MESSAGE)


def test_repr_shows_the_fingerprint_never_the_key(key: PrivateKey) -> None:
    loaded = serialization.load_pem_private_key(key.to_pem(), password=None)
    assert isinstance(loaded, ed25519.Ed25519PrivateKey)
    raw = loaded.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )

    text = f"{key!r} {key}"

    short = key.public_key.short_fingerprint
    assert repr(key) == f"PrivateKey(algorithm='ed25519', fingerprint='{short}')"
    assert raw.hex() not in text
    assert "PRIVATE" not in text


def test_malformed_keys_are_invalid_key_errors() -> None:
    with pytest.raises(InvalidKeyError, match="32 bytes, got 31"):
        PublicKey("ed25519", b"\x00" * 31)
    with pytest.raises(InvalidKeyError, match="unknown signature algorithm 'rsa'"):
        PublicKey("rsa", b"\x00" * 32)  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError, match="not a PEM public key"):
        PublicKey.from_pem(b"hello")
    with pytest.raises(InvalidKeyError, match="not an unencrypted PEM private key"):
        PrivateKey.from_pem(b"hello")


def test_loading_a_non_ed25519_or_missing_key_names_the_file(tmp_path: Path) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "p256.key"
    path.write_bytes(p256)

    with pytest.raises(
        IdentityFileError,
        match=r"p256\.key: not a key of a signature algorithm fedgrpc knows",
    ):
        load_private_key(path)
    with pytest.raises(IdentityFileError, match=r"cannot read public key .*gone\.pub"):
        load_public_key(tmp_path / "gone.pub")
