"""Enforce STYLE.md 3.6 module sizes (run by `make lint`).

Fails (exit 1, naming the files) if any checked .py file is over 400 lines;
warns on stderr above 300, the review trigger. Generated stubs in
fedgrpc/_proto are not ours to split and are skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED_DIRS = ("fedgrpc", "tests", "scripts", "bench", "client", "server")
SKIPPED_DIRS = (ROOT / "fedgrpc" / "_proto", ROOT / ".venv")
WARN_LINES = 300
MAX_LINES = 400


def python_files() -> Iterator[Path]:
    """Every .py file under the checked directories, minus the skipped trees."""
    for name in CHECKED_DIRS:
        for path in sorted((ROOT / name).rglob("*.py")):
            if not any(path.is_relative_to(skip) for skip in SKIPPED_DIRS):
                yield path


def count_lines(path: Path) -> int:
    """Physical lines, as `wc -l` and editors count them."""
    with path.open("rb") as f:
        return sum(1 for _ in f)


def main() -> int:
    too_long: list[str] = []
    for path in python_files():
        lines = count_lines(path)
        rel = path.relative_to(ROOT)
        if lines > MAX_LINES:
            too_long.append(f"  {rel}: {lines} lines")
        elif lines > WARN_LINES:
            print(
                f"warning: {rel} has {lines} lines (> {WARN_LINES}); "
                "consider splitting it by job",
                file=sys.stderr,
            )
    if too_long:
        print(
            f"error: files over the {MAX_LINES}-line limit (STYLE.md 3.6); "
            "split them by job:\n" + "\n".join(too_long),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
