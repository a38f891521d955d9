"""Other languages' stubs (`scripts/gen_stubs.sh`) and `buf lint` on protos/.

The script needs a protoc with the C++/Java/Ruby generators (grpcio-tools'
own protoc has only Python's): $PROTOC, else the protoc beside $PYTHON (set
to this interpreter, so .venv/bin/protoc), else protoc on PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_stubs.sh"
BUF = REPO / "client" / "node" / "node_modules" / ".bin" / "buf"
BASH = shutil.which("bash") or "/bin/bash"  # absolute: some tests narrow PATH
pytestmark = pytest.mark.system

# Per language: generated file -> strings that prove it holds our messages.
EXPECTED: dict[str, dict[str, tuple[str, ...]]] = {
    "cpp": {
        "fedgrpc/v1/coordinator.pb.h": (
            "namespace fedgrpc",
            "class JoinRequest",
            "class PushUpdateRequest",
        ),
        "fedgrpc/v1/common.pb.cc": ("fedgrpc.v1.ModelSpec",),
    },
    "java": {
        "dev/fedgrpc/v1/PushUpdateRequest.java": (
            "package dev.fedgrpc.v1;",
            "class PushUpdateRequest",
        ),
        "dev/fedgrpc/v1/CoordinatorProto.java": (
            "package dev.fedgrpc.v1;",
            "JoinRequest",
        ),
    },
    "ruby": {
        "fedgrpc/v1/coordinator_pb.rb": (
            "module Fedgrpc",
            'lookup("fedgrpc.v1.PushUpdateRequest")',
        ),
    },
}

# Fake grpc_cpp_plugin: one file per proto naming its RPCs, so the test sees
# that the script hands service generation to the plugin it found on PATH.
FAKE_PLUGIN = """\
import sys
from google.protobuf.compiler import plugin_pb2 as pb

request = pb.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
response = pb.CodeGeneratorResponse(
    supported_features=pb.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
)
for proto in request.proto_file:
    if proto.name in request.file_to_generate and proto.service:
        rpcs = [f"{s.name}/{m.name}" for s in proto.service for m in s.method]
        name = proto.name.replace(".proto", ".fake_grpc")
        response.file.add(name=name, content="\\n".join(rpcs))
sys.stdout.buffer.write(response.SerializeToString())
"""

# What the script runs besides protoc and Python (both found by absolute path).
SCRIPT_TOOLS = (
    "tr", "dirname", "basename", "rm", "mkdir", "mktemp", "find", "sort", "wc", "cp",
)  # fmt: skip


def _gen_stubs(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [BASH, str(SCRIPT), *args],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
    )  # fmt: skip


def _path_without_grpc_plugins(tmp_path: Path) -> str:
    """A PATH holding only the tools the script needs, so no gRPC plugin."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in (*SCRIPT_TOOLS, "protoc"):
        found = shutil.which(tool)
        if found is not None:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.parametrize("lang", sorted(EXPECTED))
def test_gen_stubs_writes_message_code(lang: str, tmp_path: Path) -> None:
    out = tmp_path / lang

    result = _gen_stubs(lang, str(out))

    assert result.returncode == 0, result.stderr
    for rel, needles in EXPECTED[lang].items():
        text = (out / rel).read_text()
        assert len(text) > 1000, rel
        for needle in needles:
            assert needle in text, f"{rel} lacks {needle!r}"
    written = re.search(rf"wrote (\d+) {lang} files", result.stdout)
    assert written is not None, result.stdout
    assert int(written.group(1)) == len(_files(out))


def test_gen_stubs_without_grpc_plugin_notes_skipped_services(tmp_path: Path) -> None:
    path = _path_without_grpc_plugins(tmp_path)

    result = _gen_stubs("c++", str(tmp_path / "out"), path=path)

    assert result.returncode == 0, result.stderr
    assert "cpp service stubs skipped: no grpc_cpp_plugin on PATH" in result.stderr
    assert "buf.build/grpc/cpp" in result.stderr
    assert "(messages only)" in result.stdout
    assert not list((tmp_path / "out").rglob("*.grpc.pb.*"))


def test_gen_stubs_uses_grpc_plugin_on_path(tmp_path: Path) -> None:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    plugin = plugin_dir / "grpc_cpp_plugin"
    plugin.write_text(f"#!{sys.executable}\n{FAKE_PLUGIN}")
    plugin.chmod(0o755)
    out = tmp_path / "out"

    result = _gen_stubs(
        "cpp", str(out), path=f"{plugin_dir}{os.pathsep}{os.environ['PATH']}"
    )

    assert result.returncode == 0, result.stderr
    assert "(messages and services)" in result.stdout
    rpcs = (out / "fedgrpc/v1/coordinator.fake_grpc").read_text().split()
    assert "CoordinatorService/PushUpdate" in rpcs
    admin_rpcs = (out / "fedgrpc/v1/admin.fake_grpc").read_text().splitlines()
    assert admin_rpcs == ["AdminService/GetStatus", "AdminService/ResetDivergenceGuard"]
    assert (out / "fedgrpc/v1/coordinator.pb.h").is_file()


def test_gen_stubs_unknown_language_lists_valid_ones(tmp_path: Path) -> None:
    result = _gen_stubs("cobol", str(tmp_path / "out"))

    assert result.returncode == 2
    assert "unknown language 'cobol'" in result.stderr
    assert "cpp java csharp ruby php objc" in result.stderr
    assert not (tmp_path / "out").exists()


def test_buf_lint_standard_passes_on_protos() -> None:
    # Installed by `make install` from client/node/package.json (npm ci).
    assert BUF.exists(), f"{BUF.relative_to(REPO)} missing; run `make install`"
    protos = REPO / "protos"

    rules = subprocess.run(
        [str(BUF), "config", "ls-lint-rules", "--configured-only"],
        capture_output=True, text=True, timeout=60, cwd=protos,
    )  # fmt: skip
    lint = subprocess.run(
        [str(BUF), "lint"], capture_output=True, text=True, timeout=60, cwd=protos
    )

    assert rules.returncode == 0, rules.stderr
    assert "RPC_REQUEST_STANDARD_NAME" in rules.stdout  # STANDARD, not MINIMAL/BASIC
    assert lint.returncode == 0, lint.stdout + lint.stderr
