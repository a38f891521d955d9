"""The coordinator's allowed-keys list: directories, files, fingerprints, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedgrpc.crypto.allowlist import AllowedKeys
from fedgrpc.crypto.files import save_key_pair
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.errors import ConfigError

A, B, C = (PrivateKey.generate() for _ in range(3))


def test_a_directory_allows_its_pub_files_only(tmp_path: Path) -> None:
    save_key_pair(A, tmp_path, "a")  # a.key sits beside a.pub and is ignored
    save_key_pair(B, tmp_path, "b")
    (tmp_path / "notes.txt").write_text("not a key")

    allowed = AllowedKeys.from_path(tmp_path)

    assert A.public_key in allowed
    assert B.public_key in allowed
    assert C.public_key not in allowed
    assert len(allowed) == 2


def test_a_file_mixes_pem_keys_fingerprints_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "allowed"
    path.write_bytes(
        b"# workers\n"
        + A.public_key.to_pem()
        + f"{B.public_key.fingerprint.upper()}  # worker b, by fingerprint\n\n".encode()
    )

    allowed = AllowedKeys.from_path(path)

    assert A.public_key in allowed
    assert B.public_key in allowed
    assert C.public_key not in allowed


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"# nobody\n", "lists no key"),
        (b"not-a-fingerprint\n", "line 1"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "PEM"),
    ],
)
def test_unusable_lists_name_the_problem(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "allowed"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        AllowedKeys.from_path(path)


def test_a_missing_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="allowed_client_keys="):
        AllowedKeys.from_path(tmp_path / "missing")
