"""A coordinator away for longer than reconnect_max_s: rounds resume at once after.

As a new user would: `fedgrpc serve --checkpoint-dir --identity-key` with
two clients per round and a 60 s round timeout, two client processes with
throwaway keys and `reconnect_max_s = 1`. The coordinator is SIGKILLed,
stays down for several reconnect budgets (each client's sync points end
"offline" meanwhile and training goes on), then restarts on the same
address. Both clients re-join under their old ids and train until the same
model version; no round, the last one included, waits out its timeout.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from fedgrpc.crypto.files import save_key_pair
from fedgrpc.crypto.keys import PrivateKey
from tests.conftest import Spawn
from tests.helpers import eventually
from tests.helpers.serve import log_events, start_serve
from tests.helpers.trainer import (
    ROUND_TIMEOUT_S,
    assert_no_round_waited,
    outcomes,
    report_lines,
    start_trainer,
)

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]
KILL_AT_VERSION = 3
FINAL_VERSION = 8
RECONNECT_MAX_S = 1.0
AWAY_S = 4 * RECONNECT_MAX_S
WAIT_S = 120.0
"""Bound on each wait; more than a round timeout (see ROUND_TIMEOUT_S)."""


def _version(report: Path) -> int:
    return max((line.get("version", 0) for line in report_lines(report)), default=0)


def test_clients_back_from_a_long_coordinator_outage_finish_with_no_round_waiting(
    spawn: Spawn, tmp_path: Path
) -> None:
    # Arrange: a durable coordinator with a stable key, two clients training.
    save_key_pair(PrivateKey.generate(), tmp_path / "keys", "coordinator")
    flags = ["--min-clients", "2", "--inner-steps", "2", "--open-enrollment",
             "--round-timeout-s", str(ROUND_TIMEOUT_S),
             "--checkpoint-dir", str(tmp_path / "ckpt"),
             "--identity-key", str(tmp_path / "keys" / "coordinator.key")]  # fmt: skip
    first, address = start_serve(spawn, tmp_path / "first.log", *flags)
    reports = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    clients = [
        start_trainer(spawn, address, 1000, report,
                      "--until-version", str(FINAL_VERSION),
                      "--reconnect-max-s", str(RECONNECT_MAX_S))
        for report in reports
    ]  # fmt: skip
    eventually(lambda: _version(reports[0]) >= KILL_AT_VERSION, WAIT_S)

    # Act: the coordinator dies, stays away, and comes back on its address.
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=WAIT_S) == -signal.SIGKILL
    time.sleep(AWAY_S)  # the outage itself: nothing to poll for
    start_serve(spawn, tmp_path / "second.log", *flags, listen=address)
    for process in clients:
        try:
            assert process.wait(timeout=WAIT_S) == 0
        except subprocess.TimeoutExpired:
            pytest.fail(f"a client did not finish within {WAIT_S} s")

    # Assert: both rode out the outage and ended on the same applied round.
    for report in reports:
        seen = outcomes(report)
        assert "offline" in seen, seen
        assert set(seen) <= {"applied", "offline"}, seen
        assert seen[-1] == "applied"
        assert _version(report) == FINAL_VERSION
    before = [e for e in log_events(tmp_path / "first.log")
              if e["event"] == "round_closed"]  # fmt: skip
    after = [e for e in log_events(tmp_path / "second.log")
             if e["event"] == "round_closed"]  # fmt: skip
    assert after[-1]["version"] == FINAL_VERSION
    assert_no_round_waited(before + after)
    joined = [e["client"] for e in log_events(tmp_path / "second.log")
              if e["event"] == "client_joined"]  # fmt: skip
    ids = {report_lines(report)[0]["client"] for report in reports}
    assert set(joined) == ids  # re-joined under their old ids
