"""bench/distributed_dp.py's quick mode runs and reports the noise stage's share.

Smoke only: the figures are the bench's to measure, not asserted as
timings (this machine is shared and noisy).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.system


def test_distributed_dp_bench_quick() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "distributed_dp.py"), "--quick"],
        capture_output=True, text=True, timeout=170, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)

    assert report["bench"] == "distributed_dp"
    off, dp = report["results"]["off"], report["results"]["distributed"]
    assert dp["ring_bits"] > off["ring_bits"]  # the ring widened for the noise
    assert dp["bytes_per_client"] > off["bytes_per_client"]
    assert dp["client_noise_cpu_s"] > 0
    assert "noise_stage<=5%_of_round" in report["goals"]
