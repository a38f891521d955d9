"""Exported updates: written as sent, re-verified by `fedgrpc verify`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fedgrpc.cli import main
from fedgrpc.client.connection.channel import Credentials
from fedgrpc.client.connection.push import Signing, UpdateMeta, update_requests
from fedgrpc.crypto.files import save_key_pair
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.wire.codec_params import DENSE_FP32_BINDING
from fedgrpc.wire.export import (
    MAGIC,
    ExportContext,
    ExportFormatError,
    export_path,
    exported,
    verify_export,
)

KEY = PrivateKey.generate()
META = UpdateMeta(
    round_id=3,
    base_version=2,
    kind="pseudo_gradient",
    num_samples=5,
    round_nonce=b"n" * 16,
    base_sha256=b"b" * 32,
)


async def _export(directory: Path) -> tuple[Path, str]:
    """Write one signed 3-chunk update; returns (file, its digest)."""
    signing = Signing(KEY, "run9", DENSE_FP32_BINDING)
    flat = torch.arange(600, dtype=torch.float32)
    requests = update_requests(
        Credentials("c00004", b"t" * 16), META, flat, 1024, signing
    )
    path = export_path(str(directory), "run9", 3, "c00004")
    context = ExportContext("run9", KEY.public_key, DENSE_FP32_BINDING)
    sent = [r async for r in exported(requests, path, context)]
    commit = sent[-1]
    assert not isinstance(commit, bytes)
    return path, commit.commit.chain_sha256.hex()


async def test_an_export_verifies_against_its_digest_and_nothing_else(
    tmp_path: Path,
) -> None:
    path, digest = await _export(tmp_path)

    report = verify_export(path, digest.upper())
    wrong = verify_export(path, "0" * 64)
    other_key = verify_export(path, digest, PrivateKey.generate().public_key)

    assert path.name == "run9-r000003-c00004.fedupdate"
    assert report.ok, report.reason
    assert (report.client_id, report.round_id, report.chunks) == ("c00004", 3, 3)
    assert report.payload_bytes == 600 * 4
    assert report.key_sha256 == KEY.public_key.fingerprint
    assert not wrong.ok
    assert digest in wrong.reason
    assert not other_key.ok
    assert "signed by key" in other_key.reason


async def test_a_tampered_export_fails_verification(tmp_path: Path) -> None:
    path, digest = await _export(tmp_path)
    data = bytearray(path.read_bytes())
    data[-200] ^= 0x01  # a payload byte of the last chunk
    path.write_bytes(bytes(data))

    report = verify_export(path, digest)

    assert not report.ok
    assert "altered" in report.reason


async def test_verify_cli_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, digest = await _export(tmp_path)
    save_key_pair(KEY, tmp_path, "client")
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an export")

    ok = main(["verify", "--update", str(path), "--hash", digest,
               "--key", str(tmp_path / "client.pub")])  # fmt: skip
    ok_out = capsys.readouterr().out
    mismatch = main(["verify", "--update", str(path), "--hash", "ab" * 32])
    mismatch_out = capsys.readouterr().out
    unreadable = main(["verify", "--update", str(junk), "--hash", digest])
    unreadable_err = capsys.readouterr().err

    assert ok == 0
    assert f"is update {digest}" in ok_out
    assert mismatch == 1
    assert mismatch_out.startswith("MISMATCH")
    assert unreadable == 2
    assert "not a fedgrpc update export" in unreadable_err


async def test_an_export_cut_short_leaves_no_file(tmp_path: Path) -> None:
    signing = Signing(KEY, "run9", DENSE_FP32_BINDING)
    flat = torch.zeros(600)
    requests = update_requests(Credentials("c1", b"t"), META, flat, 1024, signing)
    path = export_path(str(tmp_path), "run9", 3, "c1")
    stream = exported(
        requests, path, ExportContext("run9", KEY.public_key, DENSE_FP32_BINDING)
    )
    await anext(stream)
    await stream.aclose()  # the push failed after the header
    assert os.listdir(tmp_path) == []  # neither the file nor a .partial one
    with pytest.raises(ExportFormatError, match="cannot read"):
        verify_export(path, "0" * 64)
    assert MAGIC.startswith(b"fedgrpc-update")
