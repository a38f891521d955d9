"""The client's shape (issue 12): connection/ below the round logic, secure/ a mode.

Checked on the AST of every module in fedgrpc/client, imports inside
functions and `if TYPE_CHECKING:` included, so a cycle cannot hide there.
"""

from __future__ import annotations

import ast
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[3] / "fedgrpc" / "client"
SECURE = "fedgrpc.client.secure"
CONNECTION = "fedgrpc.client.connection"
HOLDS_THE_SECURE_MODE = frozenset({"fedgrpc.client.diloco"})


def _module_name(path: Path) -> str:
    parts = path.relative_to(CLIENT.parents[1]).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _client_imports() -> dict[str, set[str]]:
    """module -> the fedgrpc.client modules it imports (anywhere in its body)."""
    modules = {_module_name(p): p for p in sorted(CLIENT.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                candidates = [node.module] + [
                    f"{node.module}.{alias.name}" for alias in node.names
                ]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            found.update(c for c in candidates if c in modules and c != name)
        graph[name] = found
    return graph


GRAPH = _client_imports()


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _cycle_from(start: str) -> list[str] | None:
    """A path start -> ... -> start through the import graph, if any."""
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in GRAPH[node]:
            # A package's __init__ re-exporting its own modules is not a cycle.
            if _within(nxt, node) or _within(node, nxt):
                continue
            if nxt == start:
                return [*path, nxt]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_the_client_package_has_no_import_cycles_type_checking_included() -> None:
    assert len(GRAPH) > 15, sorted(GRAPH)

    cycles = [c for m in sorted(GRAPH) if (c := _cycle_from(m))]

    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_connection_knows_neither_round_logic_nor_secure_aggregation() -> None:
    inside = [m for m in GRAPH if _within(m, CONNECTION)]

    bad = {
        m: sorted(
            i
            for i in GRAPH[m]
            if not _within(i, CONNECTION) and i != "fedgrpc.client.status"
        )
        for m in inside
    }

    assert not any(bad.values()), bad


def test_only_the_client_that_holds_the_mode_imports_secure_aggregation() -> None:
    outside = [m for m in GRAPH if not _within(m, SECURE)]

    importers = {m for m in outside if any(_within(i, SECURE) for i in GRAPH[m])}

    assert importers <= HOLDS_THE_SECURE_MODE, sorted(importers)
