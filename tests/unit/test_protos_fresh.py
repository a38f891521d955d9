"""The committed stubs in fedgrpc/_proto match protos/ and pyproject's floors.

Regenerates into a temporary directory and compares bytes (STYLE.md 3.3), so
it needs no git and passes in a fresh clone; `make test` therefore enforces it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool

from fedgrpc._proto.v1 import admin_pb2, coordinator_pb2

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "fedgrpc" / "_proto"
FIX = "run `make protos` and commit the result"


def _tree(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file, ignoring bytecode caches."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def _floor(package: str) -> str:
    """The `>=` version floor of `package` in pyproject's dependencies."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pattern = re.compile(rf"^{re.escape(package)}\s*>=\s*([\w.]+)")
    for requirement in pyproject["project"]["dependencies"]:
        if match := pattern.match(requirement):
            return match.group(1)
    pytest.fail(f"pyproject.toml has no `{package}>=` dependency")


def test_generated_stubs_match_protos(tmp_path: Path) -> None:
    # Arrange: gen_protos replaces --out, so give it a fresh subdirectory.
    out = tmp_path / "_proto"

    # Act
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # Assert
    assert result.returncode == 0, f"gen_protos.py failed:\n{result.stderr}"
    fresh, committed = _tree(out), _tree(COMMITTED)
    assert fresh, "gen_protos.py wrote nothing"
    missing = sorted(fresh.keys() - committed.keys())
    extra = sorted(committed.keys() - fresh.keys())
    stale = sorted(
        k for k in fresh.keys() & committed.keys() if fresh[k] != committed[k]
    )
    assert not missing, f"fedgrpc/_proto lacks generated files {missing}; {FIX}"
    assert not extra, (
        f"fedgrpc/_proto has files the generator no longer makes {extra}; {FIX}"
    )
    assert not stale, f"fedgrpc/_proto is stale in {stale}; {FIX}"


def test_descriptor_pool_knows_the_services() -> None:
    pool = descriptor_pool.Default()

    for module, service in (
        (coordinator_pb2, "CoordinatorService"),
        (admin_pb2, "AdminService"),
    ):
        full_name = f"fedgrpc.v1.{service}"
        assert module.DESCRIPTOR.services_by_name[service].full_name == full_name
        assert pool.FindServiceByName(full_name).full_name == full_name


def test_grpc_stamp_equals_grpcio_floor() -> None:
    grpc_files = sorted(COMMITTED.rglob("*_pb2_grpc.py"))
    assert grpc_files, "no *_pb2_grpc.py files found"
    floor = _floor("grpcio")

    stamps = {
        path.name: re.search(
            r"^GRPC_GENERATED_VERSION = '([\w.]+)'", path.read_text(), re.M
        )
        for path in grpc_files
    }

    found = {name: m.group(1) if m else None for name, m in stamps.items()}
    assert set(found.values()) == {floor}, (
        f"generated stamps {found} differ from pyproject's grpcio>={floor}; raise the "
        "floor to the stamp, or pin grpcio-tools to the floor and run `make protos`"
    )


def test_protobuf_stamp_equals_protobuf_floor() -> None:
    pb2_files = sorted(COMMITTED.rglob("*_pb2.py"))
    assert pb2_files, "no *_pb2.py files found"
    floor = _floor("protobuf")
    pattern = re.compile(
        r"ValidateProtobufRuntimeVersion\(\s*[\w.]+,\s*(\d+),\s*(\d+),\s*(\d+),"
    )

    found = {}
    for path in pb2_files:
        match = pattern.search(path.read_text())
        found[path.name] = ".".join(match.groups()) if match else None

    assert set(found.values()) == {floor}, (
        f"generated stamps {found} differ from pyproject's protobuf>={floor}; "
        "raise the floor to the stamp"
    )
