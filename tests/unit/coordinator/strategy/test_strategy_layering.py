"""The strategy stages stay plain Python: no gRPC, asyncio, protobuf or servicers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
STRATEGY = REPO / "fedgrpc" / "coordinator" / "strategy"
ALLOWED_FEDGRPC = (
    "fedgrpc.aggregate",
    "fedgrpc.optim",
    "fedgrpc.privacy",
    "fedgrpc.config",
    "fedgrpc.errors",
    "fedgrpc.log",
    "fedgrpc.coordinator.strategy",
)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: use absolute imports"
            names.add(node.module or "")
    return names


def test_strategy_modules_import_only_stages_and_base_modules() -> None:
    modules = sorted(STRATEGY.glob("*.py"))
    assert len(modules) >= 6

    bad = {
        path.name: sorted(
            name
            for name in _imports(path)
            if name.split(".")[0] in {"grpc", "asyncio", "google"}
            or (name.startswith("fedgrpc") and not name.startswith(ALLOWED_FEDGRPC))
        )
        for path in modules
    }

    assert not any(bad.values()), bad


def test_importing_the_stages_loads_no_grpc_or_protobuf_module() -> None:
    code = (
        "import sys, fedgrpc.coordinator.strategy, fedgrpc.aggregate\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'google')"
        " or m.endswith('_pb2')]\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )

    assert result.stdout.strip() == "[]"
