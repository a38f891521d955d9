"""Import layering of fedgrpc (STYLE.md 3.1), checked on the AST of every module.

Cheaper than import-linter and it keeps DESIGN.md's one-way data path honest:
only the gRPC edges know gRPC, the round engine stays testable without it, and
the library never reaches into the deployment directories or the tests.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GRPC_ROOTS = frozenset(
    {"grpc", "grpc_health", "grpc_reflection", "grpc_status", "grpc_tools"}
)
GRPC_ALLOWED = ("fedgrpc.coordinator", "fedgrpc.client", "fedgrpc._proto")
PURE_ENGINE = (
    "fedgrpc.coordinator.rounds.engine",
    "fedgrpc.coordinator.rounds.rules",  # the engine's refusal rules
    "fedgrpc.coordinator.rounds.rules",  # and its closing rules
    "fedgrpc.coordinator.rounds.registry",
    "fedgrpc.coordinator.rounds.records",
    "fedgrpc.coordinator.rounds.global_model",
)
OUTSIDE_ROOTS = frozenset({"server", "client", "tests"})  # deployment dirs, tests
# config.py re-exports config_client (ClientConfig) and config_checks.
BASE = (
    "fedgrpc.errors",
    "fedgrpc.config",
    "fedgrpc.config_checks",
    "fedgrpc.config_client",
    "fedgrpc.log",
)
LEAVES = ("compress", "crypto", "secagg", "aggregate", "optim")
# wire/secagg.py converts the secagg state machines' messages (a leaf package,
# so the data path stays one-way: secagg -> wire -> coordinator/client).
WIRE_MAY_IMPORT = (
    *BASE,
    "fedgrpc._proto",
    "fedgrpc.domain",
    "fedgrpc.compress",
    "fedgrpc.crypto",
    "fedgrpc.secagg",
)
ROLES = ("fedgrpc.coordinator", "fedgrpc.client", "fedgrpc.sim", "fedgrpc.cli")
# cli (and its operations commands) and sim drive the roles; the package root
# re-exports DiLoCoClient (3.4).
ROLE_IMPORTERS = ("fedgrpc.cli", "fedgrpc.cli_ops", "fedgrpc.sim")


def _within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _resolve(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    parts = parts[: len(parts) - node.level + 1]
    return ".".join([*parts, node.module] if node.module else parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Absolute names of everything `module` imports, relative imports resolved.

    Walks the whole tree, so imports inside functions and `if TYPE_CHECKING:`
    count too. `from a import b` yields `a` and `a.b`: `b` may be a submodule.
    """
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, package)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def imports_grpc(names: set[str]) -> bool:
    return any(name.split(".")[0] in GRPC_ROOTS for name in names)


def _modules() -> dict[str, set[str]]:
    found = {}
    for path in sorted((ROOT / "fedgrpc").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        is_package = rel.name == "__init__"
        module = ".".join(rel.parent.parts if is_package else rel.parts)
        found[module] = imported_modules(
            path.read_text(), module, is_package=is_package
        )
    return found


MODULES = _modules()


def _offenders(modules: list[str], forbidden: Callable[[str], bool]) -> str:
    """One line per module importing something `forbidden`; empty if none does."""
    lines = []
    for module in modules:
        hits = sorted(name for name in MODULES[module] if forbidden(name))
        if hits:
            lines.append(f"\n  {module}: {', '.join(hits)}")
    return "".join(lines)


def _fedgrpc_outside(*allowed: str) -> Callable[[str], bool]:
    """Predicate: a fedgrpc module other than the package root and `allowed`."""

    def forbidden(name: str) -> bool:
        return (
            _within(name, "fedgrpc")
            and name != "fedgrpc"
            and not _within(name, *allowed)
        )

    return forbidden


def test_detector_sees_grpc_and_resolves_relative_imports() -> None:
    source = "import os\nif x:\n    import grpc.aio\nfrom ..client import conn\n"
    names = imported_modules(source, "fedgrpc.wire.convert")

    assert imports_grpc(names)
    assert "fedgrpc.client.conn" in names
    assert imports_grpc({"grpc_health.v1.health"})
    assert not imports_grpc({"fedgrpc.coordinator.services.status", "grpcx"})
    assert "fedgrpc.wire" in imported_modules(
        "from . import x", "fedgrpc.wire", is_package=True
    )
    assert _fedgrpc_outside(*BASE)("fedgrpc.domain.model_spec")
    assert not _fedgrpc_outside(*BASE)("fedgrpc.errors.ConfigError")


def test_only_coordinator_client_and_proto_import_grpc() -> None:
    others = [m for m in MODULES if not _within(m, *GRPC_ALLOWED)]
    assert others, f"no modules found under {ROOT / 'fedgrpc'}"

    bad = _offenders(others, lambda name: imports_grpc({name}))

    assert not bad, f"only coordinator/, client/ and _proto/ may import grpc:{bad}"


@pytest.mark.parametrize("module", PURE_ENGINE)
def test_round_engine_imports_neither_grpc_nor_asyncio(module: str) -> None:
    assert module in MODULES, f"{module} is gone: update PURE_ENGINE"

    bad = _offenders(
        [module], lambda name: imports_grpc({name}) or _within(name, "asyncio")
    )

    assert not bad, f"the round engine must stay plain Python:{bad}"


def test_library_never_imports_deployment_dirs_or_tests() -> None:
    bad = _offenders(list(MODULES), lambda name: name.split(".")[0] in OUTSIDE_ROOTS)

    assert not bad, f"fedgrpc/ must not import server/, client/ or tests/:{bad}"


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_packages_import_only_errors_config_log(leaf: str) -> None:
    package = f"fedgrpc.{leaf}"
    modules = [m for m in MODULES if _within(m, package)]

    bad = _offenders(modules, _fedgrpc_outside(*BASE, package))

    assert not bad, f"{package} may import only {', '.join(BASE)}:{bad}"


def test_wire_imports_only_proto_compress_crypto_and_base() -> None:
    modules = [m for m in MODULES if _within(m, "fedgrpc.wire")]

    bad = _offenders(modules, _fedgrpc_outside(*WIRE_MAY_IMPORT, "fedgrpc.wire"))

    assert not bad, f"fedgrpc.wire may import only {', '.join(WIRE_MAY_IMPORT)}:{bad}"


@pytest.mark.parametrize("role", ROLES)
def test_role_packages_are_imported_only_by_cli_and_sim(role: str) -> None:
    importers = [
        m for m in MODULES if m != "fedgrpc" and not _within(m, role, *ROLE_IMPORTERS)
    ]

    bad = _offenders(importers, lambda name: _within(name, role))

    assert not bad, f"only cli and sim may import {role}:{bad}"
