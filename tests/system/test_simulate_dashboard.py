"""`fedgrpc simulate --dashboard`: the simulated coordinator serves its dashboard.

A real simulate run (coordinator and client processes); the URL it prints
must answer while the run lasts, to this host without a token (the
simulation opens it explicitly on loopback), and the run still finishes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Spawn

FEDGRPC = Path(sys.executable).with_name("fedgrpc")
pytestmark = pytest.mark.system


def test_simulate_dashboard_prints_a_url_that_serves_the_run(spawn: Spawn) -> None:
    process = spawn(
        [str(FEDGRPC), "simulate", "--clients", "2", "--rounds", "3",
         "--inner-steps", "5", "--no-progress", "--dashboard"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    url = ""
    for line in process.stderr:
        if line.startswith("dashboard: "):
            url = line.split()[1]
            break
    assert url.startswith("http://127.0.0.1:"), url
    with urllib.request.urlopen(url + "api/v1/status", timeout=10) as response:
        status = json.loads(response.read())
    assert status["run_id"]
    assert status["round_config"]["inner_steps"] == 5
    with urllib.request.urlopen(url, timeout=10) as response:
        assert b'<svg id="loss-curve"' in response.read()
    stdout, _ = process.communicate(timeout=300)
    assert process.returncode == 0
    assert "rounds" in stdout
