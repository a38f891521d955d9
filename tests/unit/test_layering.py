"""Import layering of fedgrpc (STYLE.md 3.1), checked on the AST of every module.

Cheaper than import-linter and it keeps DESIGN.md's one-way data path honest:
only the gRPC edges know gRPC, the round engine stays testable without it, and
the library never reaches into the deployment directories or the tests.

Every rule is about what a module *reaches*: its imports, theirs, and so on,
with imports inside functions and under `if TYPE_CHECKING:` counted too (a
type-only import is still a dependency a reader must follow). Importing
`a.b.c` also runs `a/__init__` and `a/b/__init__`, so those count as reached.
The package root `fedgrpc` is the public facade over every layer (it
re-exports the client lazily): no library module below the roles imports it,
and it is not counted as the parent of the modules it contains. No module is
exempt from any rule.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GRPC_ROOTS = frozenset(
    {"grpc", "grpc_health", "grpc_reflection", "grpc_status", "grpc_tools"}
)
GRPC_ALLOWED = ("fedgrpc.coordinator", "fedgrpc.client", "fedgrpc._proto")
BASE = (
    "fedgrpc.errors",
    "fedgrpc.log",
    "fedgrpc.version",
    "fedgrpc.config",  # the package: coordinator, client, outer optimizer, files
    "fedgrpc.domain",  # domain types: model spec, chunks, requests, codec configs
)
LEAVES = ("compress", "crypto", "secagg", "aggregate", "optim", "privacy", "data")
# wire/secagg.py converts the secagg state machines' messages (a leaf package,
# so the data path stays one-way: secagg -> wire -> coordinator/client).
WIRE_MAY_REACH = (
    *BASE,
    "fedgrpc._proto",
    "fedgrpc.compress",
    "fedgrpc.crypto",
    "fedgrpc.secagg",
    "fedgrpc.wire",
)
ROUND_ENGINE = "fedgrpc.coordinator.rounds"
SECURE_MODE = "fedgrpc.coordinator.secure"
MODE_COMPOSER = "fedgrpc.coordinator.services.server"
"""Where the runtime is built with a round mode: the one plain module that may
reach `secure/` (composition, DESIGN.md)."""
IN_PROCESS_SHELLS = (
    "fedgrpc.coordinator.inprocess",
    "fedgrpc.coordinator.services.in_thread",
)
"""`fedgrpc.Coordinator` and the thread it runs on: shells around the composer
(as `fedgrpc serve` is), so they reach `secure/` only through it."""
LEAF_LINK = "fedgrpc.coordinator.tree"
"""A leaf of an aggregation tree is a client of its root: the one coordinator
package that reaches `fedgrpc.client` (never a second implementation of the
protocol), plugged in where `secure/` is composed (MODE_COMPOSER and the
in-process shells), so no other coordinator module reaches the client."""
ROLES = ("fedgrpc.coordinator", "fedgrpc.client", "fedgrpc.sim", "fedgrpc.cli")
# cli (and its subcommand modules), sim and the trainer integrations drive
# the roles.
ROLE_IMPORTERS = (
    "fedgrpc.cli",
    "fedgrpc.cli_ops",
    "fedgrpc.cli_identity",
    "fedgrpc.sim",
    "fedgrpc.integrations",
)
INTEGRATIONS = "fedgrpc.integrations"
EXTRAS = {
    "transformers": ("fedgrpc.integrations.hf",),
    "lightning": ("fedgrpc.integrations.lightning",),
    "peft": ("fedgrpc.integrations.peft",),
}
"""Optional extras and the one module each may be imported from: `import
fedgrpc` (and every other module) must work without them installed."""
OUTSIDE_ROOTS = frozenset({"server", "client", "tests"})  # deployment dirs, tests


def _within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _resolve(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    parts = parts[: len(parts) - node.level + 1]
    return ".".join([*parts, node.module] if node.module else parts)


def _module_names() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "fedgrpc").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        is_package = rel.name == "__init__"
        found[".".join(rel.parent.parts if is_package else rel.parts)] = path
    return found


PATHS = _module_names()


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Absolute names of everything `module` imports, relative imports resolved.

    Walks the whole tree, so imports inside functions and `if TYPE_CHECKING:`
    count too. `from a import b` yields `a.b` when that is a module of
    fedgrpc, else `a` (b is a name defined in a).
    """
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                names.add(sub if sub in PATHS else base)
    return names


def imports_grpc(names: set[str]) -> bool:
    return any(name.split(".")[0] in GRPC_ROOTS for name in names)


IMPORTS = {
    module: imported_modules(
        path.read_text(), module, is_package=path.name == "__init__.py"
    )
    for module, path in PATHS.items()
}


def _parents(module: str) -> list[str]:
    """Packages whose `__init__` importing `module` runs (not the root facade)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


@cache
def reached(module: str) -> frozenset[str]:
    """Every name `module` reaches: fedgrpc modules and third-party roots."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        for name in (*IMPORTS[current], *_parents(current)):
            if name in seen:
                continue
            seen.add(name)
            if name in PATHS and name != "fedgrpc":
                todo.append(name)
    return frozenset(seen - {module})


def _offenders(modules: list[str], forbidden: Callable[[str], bool]) -> str:
    """One line per module reaching something `forbidden`; empty if none does."""
    lines = []
    for module in modules:
        hits = sorted(name for name in reached(module) if forbidden(name))
        if hits:
            lines.append(f"\n  {module}: {', '.join(hits[:6])}")
    return "".join(lines)


def _fedgrpc_outside(*allowed: str) -> Callable[[str], bool]:
    """Predicate: a fedgrpc module other than those `allowed`."""

    def forbidden(name: str) -> bool:
        return _within(name, "fedgrpc") and not _within(name, *allowed)

    return forbidden


def _in(*packages: str) -> list[str]:
    modules = [m for m in PATHS if _within(m, *packages)]
    assert modules, f"no modules under {packages}: update the table"
    return modules


def test_detector_sees_grpc_and_resolves_relative_imports() -> None:
    source = "import os\nif x:\n    import grpc.aio\nfrom ..client import diloco\n"
    names = imported_modules(source, "fedgrpc.wire.convert")

    assert imports_grpc(names)
    assert "fedgrpc.client.diloco" in names
    assert imports_grpc({"grpc_health.v1.health"})
    assert not imports_grpc({"fedgrpc.coordinator.services.status", "grpcx"})
    assert "fedgrpc.wire" in imported_modules(
        "from . import not_a_module", "fedgrpc.wire", is_package=True
    )
    assert _fedgrpc_outside(*BASE)("fedgrpc.wire.convert")
    assert not _fedgrpc_outside(*BASE)("fedgrpc.errors")


def test_reach_is_transitive_and_counts_parent_packages() -> None:
    assert "fedgrpc.coordinator" in reached("fedgrpc.coordinator.rounds.engine")
    # runtime -> ingest.updates -> wire.frames -> _proto: two steps away.
    assert "fedgrpc._proto.v1.coordinator_pb2" in reached("fedgrpc.coordinator.runtime")
    assert "grpc" in reached("fedgrpc.coordinator.services.server")


def test_only_coordinator_client_and_proto_import_grpc() -> None:
    others = [m for m in PATHS if not _within(m, *GRPC_ALLOWED)]

    bad = "".join(f"\n  {m}" for m in others if imports_grpc(IMPORTS[m]))

    assert not bad, f"only coordinator/, client/ and _proto/ may import grpc:{bad}"


def test_base_modules_reach_only_base_modules() -> None:
    bad = _offenders(_in(*BASE), _fedgrpc_outside(*BASE))

    assert not bad, f"base modules may reach only {', '.join(BASE)}:{bad}"


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_packages_reach_only_base_modules(leaf: str) -> None:
    package = f"fedgrpc.{leaf}"

    bad = _offenders(
        _in(package),
        lambda name: _fedgrpc_outside(*BASE, package)(name) or imports_grpc({name}),
    )

    assert not bad, f"{package} may reach only {', '.join(BASE)}:{bad}"


def test_wire_reaches_only_proto_compress_crypto_secagg_and_base() -> None:
    bad = _offenders(
        _in("fedgrpc.wire"),
        lambda name: (
            _fedgrpc_outside(*WIRE_MAY_REACH)(name)
            or imports_grpc({name})
            or name.endswith("_pb2_grpc")
        ),
    )

    assert not bad, f"fedgrpc.wire may reach only {', '.join(WIRE_MAY_REACH)}:{bad}"


def test_round_engine_reaches_neither_grpc_asyncio_nor_protobuf() -> None:
    bad = _offenders(
        _in(ROUND_ENGINE),
        lambda name: (
            imports_grpc({name})
            or _within(name, "asyncio", "fedgrpc._proto", "google.protobuf")
        ),
    )

    assert not bad, f"the round engine must stay plain Python:{bad}"


def test_plain_coordinator_never_reaches_the_secure_mode() -> None:
    plain = [
        m
        for m in _in("fedgrpc.coordinator")
        if not _within(m, SECURE_MODE, MODE_COMPOSER, *IN_PROCESS_SHELLS)
    ]

    bad = _offenders(plain, lambda name: _within(name, SECURE_MODE))

    assert not bad, f"only {MODE_COMPOSER} composes {SECURE_MODE} in:{bad}"


@pytest.mark.parametrize("role", ROLES)
def test_role_packages_are_reached_only_from_cli_and_sim(role: str) -> None:
    allowed: tuple[str, ...] = (*ROLE_IMPORTERS, role)
    if role == "fedgrpc.client":
        allowed = (*allowed, LEAF_LINK, MODE_COMPOSER, *IN_PROCESS_SHELLS)
    others = [m for m in PATHS if m != "fedgrpc" and not _within(m, *allowed)]

    bad = _offenders(others, lambda name: _within(name, role))

    assert not bad, f"only cli and sim may import {role}:{bad}"


def test_no_library_module_imports_the_package_root() -> None:
    below_roles = [m for m in PATHS if not _within(m, "fedgrpc.cli", "fedgrpc.sim")]

    bad = "".join(f"\n  {m}" for m in below_roles if "fedgrpc" in IMPORTS[m])

    assert not bad, f"import fedgrpc.version/errors/..., not the root facade:{bad}"


def test_library_never_imports_deployment_dirs_or_tests() -> None:
    bad = _offenders(list(PATHS), lambda name: name.split(".")[0] in OUTSIDE_ROOTS)

    assert not bad, f"fedgrpc/ must not import server/, client/ or tests/:{bad}"


def _written_closure(graph: dict[str, list[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return seen


def _import_cycles() -> list[frozenset[str]]:
    """Groups of modules that import each other, directly or not (size > 1).

    Edges are written imports only (TYPE_CHECKING and function-level
    included), not parent packages: a package `__init__` re-exporting its
    submodules is not a cycle.
    """
    graph = {m: sorted(n for n in IMPORTS[m] if n in PATHS and n != m) for m in PATHS}
    reach = {m: _written_closure(graph, m) for m in graph}
    cycles = set()
    for module, reachable in reach.items():
        group = frozenset({module} | {n for n in reachable if module in reach[n]})
        if len(group) > 1:
            cycles.add(group)
    return sorted(cycles, key=sorted)


def test_cycle_finder_sees_a_two_module_cycle() -> None:
    saved = dict(IMPORTS)
    try:
        IMPORTS["fedgrpc.errors"] = {"fedgrpc.log"}
        IMPORTS["fedgrpc.log"] = {"fedgrpc.errors"}
        assert frozenset({"fedgrpc.errors", "fedgrpc.log"}) in _import_cycles()
    finally:
        IMPORTS.clear()
        IMPORTS.update(saved)


def test_no_import_cycles_anywhere() -> None:
    cycles = _import_cycles()

    assert not cycles, "import cycles (TYPE_CHECKING ones included):" + "".join(
        f"\n  {' <-> '.join(sorted(c))}" for c in cycles
    )


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_optional_extras_are_imported_only_by_their_own_integration(
    extra: str,
) -> None:
    others = [m for m in PATHS if not _within(m, *EXTRAS[extra])]

    bad = _offenders(others, lambda name: name.split(".")[0] == extra)

    assert not bad, f"only {', '.join(EXTRAS[extra])} may import {extra}:{bad}"


def test_nothing_in_the_library_reaches_the_integrations() -> None:
    # They are entry points a user imports by name, like the CLI: the root
    # facade and the roles never pull them (nor their extras) in.
    others = [m for m in PATHS if not _within(m, INTEGRATIONS)]

    bad = _offenders(others, lambda name: _within(name, INTEGRATIONS))

    assert not bad, f"nothing may import {INTEGRATIONS}:{bad}"


def test_importing_fedgrpc_and_its_client_loads_no_optional_extra() -> None:
    # The static rules above, confirmed at run time in a fresh interpreter.
    code = (
        "import sys, fedgrpc, fedgrpc.client, fedgrpc.integrations\n"
        "fedgrpc.DiLoCoClient  # the lazy re-export\n"
        f"print(sorted(m for m in {sorted(EXTRAS)!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=ROOT, check=True,
    )  # fmt: skip

    assert result.stdout.strip() == "[]"
