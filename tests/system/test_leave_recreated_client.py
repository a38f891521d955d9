"""A client re-created in the same process does not make its peers wait.

As a new user would: `fedgrpc serve` with two clients per round and a 60 s
round timeout, two client processes with throwaway keys, and one of them
re-creates its DiLoCoClient half way (a notebook cell run twice: the name
is bound to a new client, the old one is dropped without `close()`). The
dropped client used to keep heartbeating on its thread, so every later
round waited the whole timeout for an update that never came. It now
leaves when it is collected, and the new client is simply a new client.
"""

from __future__ import annotations

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
RECREATE_AT = 3
WAIT_S = 120.0
"""Bound on each client process; more than a round timeout, so a round that
waits it out fails on the assertions below rather than on a hang."""


def test_a_client_re_created_in_its_process_leaves_at_once_and_rounds_go_on(
    spawn: Spawn, tmp_path: Path
) -> None:
    # Arrange: a coordinator that needs both clients every round.
    log = tmp_path / "serve.log"
    flags = ["--min-clients", "2", "--inner-steps", "2", "--open-enrollment",
             "--round-timeout-s", str(ROUND_TIMEOUT_S)]  # fmt: skip
    _, address = start_serve(spawn, log, *flags)
    survivor, recreator = tmp_path / "survivor.jsonl", tmp_path / "recreator.jsonl"

    # Act: both train SYNCS sync points; one re-creates its client at RECREATE_AT.
    processes = [
        start_trainer(spawn, address, SYNCS, survivor),
        start_trainer(spawn, address, SYNCS, recreator,
                      "--recreate-at", str(RECREATE_AT)),
    ]  # fmt: skip
    for process in processes:
        try:
            assert process.wait(timeout=WAIT_S) == 0
        except subprocess.TimeoutExpired:
            pytest.fail(f"a client did not finish within {WAIT_S} s")

    # Assert: every round applied as soon as both updates were in.
    assert outcomes(survivor) == ["applied"] * SYNCS
    assert outcomes(recreator) == ["applied"] * SYNCS
    ids = {line["client"] for line in report_lines(recreator) if "joined" in line}
    assert len(ids) == 2  # the re-created client is a new client
    closed = [e for e in log_events(log) if e["event"] == "round_closed"]
    assert [e["round"] for e in closed] == list(range(1, SYNCS + 1))
    assert_no_round_waited(closed)
    dropped = min(ids)
    left = [e for e in log_events(log) if e["event"] == "session_ending"]
    assert any(e["client"] == dropped and "client left" in e["reason"] for e in left)
    # All of them left with throwaway keys: none stays in the status list.
    eventually(lambda: list(fetch_status(address).clients) == [], timeout_s=10)
