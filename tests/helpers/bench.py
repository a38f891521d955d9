"""Running a bench's quick mode and reading its one JSON report (tests/system)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_quick_bench(
    script: str, *args: str, timeout_s: float = 170
) -> dict[str, object]:
    """`python bench/SCRIPT --quick ARGS` from the repo root; its stdout JSON."""
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--quick", *args],
        capture_output=True, text=True, timeout=timeout_s, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, object] = json.loads(result.stdout)
    return report
