"""A client that crashes and restarts with a new key does not make peers wait.

As a new user would: `fedgrpc serve` with two clients per round and a 60 s
round timeout, two client processes with throwaway keys. One is SIGKILLed
between sync points (no leave, no close: its Session stream just ends) and
started again, which gives it a new throwaway key and so a new client id.
The dead client stops counting at once, the restarted one takes its place
in the open round, and no round waits out its timeout.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from fedgrpc.client.admin import fetch_status
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
SYNCS = 6
CRASH_AT = 3
WAIT_S = 120.0
"""Bound on each wait; more than a round timeout (see ROUND_TIMEOUT_S)."""


def test_a_client_killed_and_restarted_with_a_new_key_costs_its_peers_no_wait(
    spawn: Spawn, tmp_path: Path
) -> None:
    # Arrange: a coordinator that needs two clients every round; the victim
    # stops pushing (still heartbeating) after CRASH_AT sync points.
    log = tmp_path / "serve.log"
    flags = ["--min-clients", "2", "--inner-steps", "2", "--open-enrollment",
             "--round-timeout-s", str(ROUND_TIMEOUT_S)]  # fmt: skip
    _, address = start_serve(spawn, log, *flags)
    survivor, victim_report = tmp_path / "survivor.jsonl", tmp_path / "victim.jsonl"
    restarted = tmp_path / "restarted.jsonl"
    first = start_trainer(spawn, address, SYNCS, survivor)
    victim = start_trainer(spawn, address, SYNCS, victim_report,
                           "--idle-at", str(CRASH_AT))  # fmt: skip
    eventually(
        lambda: any("idle" in line for line in report_lines(victim_report)), WAIT_S
    )

    # Act: the victim dies without a word and comes back as a new process.
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=WAIT_S) == -signal.SIGKILL
    second = start_trainer(spawn, address, SYNCS - CRASH_AT, restarted)
    for process in (first, second):
        try:
            assert process.wait(timeout=WAIT_S) == 0
        except subprocess.TimeoutExpired:
            pytest.fail(f"a client did not finish within {WAIT_S} s")

    # Assert: every round applied as soon as both updates were in.
    assert outcomes(survivor) == ["applied"] * SYNCS
    assert outcomes(victim_report) == ["applied"] * CRASH_AT
    assert outcomes(restarted) == ["applied"] * (SYNCS - CRASH_AT)
    dead = report_lines(victim_report)[0]["client"]
    reborn = report_lines(restarted)[0]["client"]
    assert reborn != dead  # a new key is a new client
    closed = [e for e in log_events(log) if e["event"] == "round_closed"]
    assert [e["round"] for e in closed] == list(range(1, SYNCS + 1))
    assert_no_round_waited(closed)
    # The dead client's record stays (it never said goodbye, and a client
    # whose stream broke may come back under its key), disconnected.
    rows = {c.client_id: c for c in fetch_status(address).clients}
    assert dead in rows
    assert not rows[dead].connected
