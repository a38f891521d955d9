"""`fedgrpc keygen` and `fedgrpc certs`, run as the installed command."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from fedgrpc.cli import main
from fedgrpc.crypto import certificate_fingerprint, load_public_key
from fedgrpc.crypto.tls import load_client_tls, load_server_tls

FEDGRPC = Path(sys.executable).with_name("fedgrpc")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FEDGRPC), *args], capture_output=True, text=True, timeout=60, check=False
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_the_pair_and_prints_its_fingerprint(tmp_path: Path) -> None:
    out = tmp_path / "keys"

    result = _run("keygen", "--out", str(out), "--name", "node-1")

    assert result.returncode == 0, result.stderr
    printed = re.search(r"^fingerprint: ([0-9a-f]{64})$", result.stdout, re.M)
    assert printed, result.stdout
    public = load_public_key(out / "node-1.pub")
    assert printed.group(1) == public.fingerprint
    assert f"private key: {out / 'node-1.key'} (mode 0600" in result.stdout
    assert _mode(out / "node-1.key") == 0o600
    assert "PRIVATE" not in result.stdout + result.stderr


def test_keygen_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process through the console entry point: same code, no 2 s start-up.
    assert main(["keygen", "--out", str(tmp_path)]) == 0
    key_before = (tmp_path / "identity.key").read_bytes()
    capsys.readouterr()

    refused = main(["keygen", "--out", str(tmp_path)])
    refused_err = capsys.readouterr().err
    forced = main(["keygen", "--out", str(tmp_path), "--force"])

    assert refused == 2
    assert refused_err.startswith("fedgrpc keygen: error: refusing to overwrite")
    assert "--force" in refused_err
    assert forced == 0
    assert (tmp_path / "identity.key").read_bytes() != key_before


def test_certs_writes_a_working_pki_and_says_how_to_use_it(tmp_path: Path) -> None:
    out = tmp_path / "pki"

    result = _run(
        "certs", "--out", str(out), "--host", "coord.example.org",
        "--host", "10.0.0.5", "--client-name", "worker-3", "--days", "7",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    server = load_server_tls(
        str(out / "server.pem"), str(out / "server.key"), str(out / "ca.pem")
    )
    client = load_client_tls(
        str(out / "ca.pem"), str(out / "client.pem"), str(out / "client.key")
    )
    hosts = "coord.example.org, 10.0.0.5, localhost, 127.0.0.1, ::1"
    assert f"(sha256 {server.certificate_sha256}) for {hosts}" in result.stdout
    assert f"(sha256 {client.certificate_sha256}) for worker-3" in result.stdout
    assert f"--tls-client-ca {out / 'ca.pem'}" in result.stdout
    assert {p.name for p in out.iterdir() if _mode(p) == 0o600} == {
        "ca.key",
        "server.key",
        "client.key",
    }
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    assert f"(sha256 {certificate_fingerprint(ca)})" in result.stdout
    assert "PRIVATE" not in result.stdout


def test_certs_errors_are_one_line_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    not_a_dir = _run("certs", "--out", str(blocker))
    bad_host = main(["certs", "--out", str(tmp_path / "x"), "--host", "bad host"])

    assert not_a_dir.returncode == 2
    assert not_a_dir.stderr == (
        f"fedgrpc certs: error: cannot use {blocker} as the output directory: "
        "it exists and is not a directory\n"
    )
    assert bad_host == 2
    assert "host 'bad host' is invalid" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
