"""Operating a secure federation: fedgrpc_secagg_* metrics and GetStatus fields.

A real coordinator (127.0.0.1:0, secure aggregation, metrics on port 0) and
DiLoCoClients on threads run one applied masked round and one aborted below
the threshold; /metrics is scraped over HTTP and GetStatus is taken, and
neither they nor the logs may carry key material or values.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, MutableMapping
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from fedgrpc._proto.v1 import admin_pb2, coordinator_pb2
from fedgrpc.cli_ops import format_status
from fedgrpc.client.admin import fetch_status
from fedgrpc.coordinator.secure.stats import REASONS
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.secagg import ServerPhase
from tests.helpers.eventually import eventually
from tests.helpers.metrics import scrape
from tests.helpers.secure import (
    IN,
    OUT,
    close_all,
    config,
    connect,
    secure_mode_of,
    sync_all,
    wait_for_phase,
)

HEX_RUN = re.compile(r"[0-9a-fA-F]{16,}")
"""Anything key-, share- or digest-sized in hex: never in metric names, labels
or help (sample values are floats, whose digits may match)."""


@pytest.fixture
def coordinator() -> Iterator[CoordinatorThread]:
    with serve_in_thread(config(metrics_listen="127.0.0.1:0")) as running:
        yield running


def _scrape_once_counted(
    coordinator: CoordinatorThread, sample: str
) -> tuple[str, dict[str, float]]:
    """A scrape that already holds `sample` (AssertionError: not yet)."""
    text, samples = scrape(coordinator)
    assert sample in samples
    return text, samples


def test_an_applied_and_an_aborted_masked_round_show_in_metrics_and_status(
    coordinator: CoordinatorThread,
) -> None:
    # Arrange: four clients (t = 3); round 1 with all of them.
    clients = connect(coordinator.address, 4)
    mode = secure_mode_of(coordinator)
    try:
        with capture_logs() as logs:
            assert sync_all(clients, seed=1) == ["applied"] * 4
            wait_for_phase(mode, ServerPhase.MASKED_INPUT, 2)

            # Act: two clients leave after the key exchange, so round 2 has
            # two survivors for a threshold of three and aborts.
            clients[2][0].close()
            clients[3][0].close()
            assert sync_all(clients[:2], seed=2) == ["skipped", "skipped"]
        # Clients hear RoundClosed a moment before the runtime counts it.
        aborted = "fedgrpc_secagg_rounds_total{outcome=aborted,reason=too_few_clients}"
        text, samples = eventually(lambda: _scrape_once_counted(coordinator, aborted))
        status = coordinator.status()

        # Assert: metrics count one applied and one aborted round.
        applied = "fedgrpc_secagg_rounds_total{outcome=applied,reason=none}"
        assert samples[applied] == 1
        assert samples[aborted] == 1
        assert samples["fedgrpc_secagg_participants_count"] == 2
        assert samples["fedgrpc_secagg_participants_sum"] == 8
        assert samples["fedgrpc_secagg_dropouts_sum"] == 2  # 0, then 2
        assert samples["fedgrpc_secagg_unmask_seconds_count"] == 1
        assert samples["fedgrpc_secagg_positions"] == (IN + 1) * OUT  # dense
        assert "fedgrpc_secagg_guard_trips_total" not in samples  # no sparse guard
        assert samples["fedgrpc_rounds_total{outcome=applied}"] == 1

        # ... and status shows both rounds, secure, with their counts.
        assert status.secure_aggregation
        assert status.guard_trips == 0
        first, second = status.recent_rounds
        assert first.outcome == coordinator_pb2.ROUND_OUTCOME_APPLIED
        assert (first.secure, first.participants, first.survivors) == (True, 4, 4)
        assert first.positions == 0  # dense
        assert first.unmask_s > 0
        assert first.secure_abort_reason == ""
        assert second.outcome == coordinator_pb2.ROUND_OUTCOME_SKIPPED
        assert (second.secure, second.participants, second.survivors) == (True, 4, 2)
        assert second.secure_abort_reason == "too_few_clients"
        assert second.unmask_s == 0
        shown = fetch_status(coordinator.address)  # what `fedgrpc status` prints
        table = format_status(coordinator.address, shown)
        assert "secure aggregation: on" in table
        assert "2/4 survived, dense, too_few_clients" in table
        as_json = dataclasses.asdict(shown)
        assert as_json["recent_rounds"][1]["secure_abort_reason"] == "too_few_clients"

        _assert_no_key_material(status, text, samples, logs)
    finally:
        close_all(clients)


def _assert_no_key_material(
    status: admin_pb2.GetStatusResponse,
    text: str,
    samples: dict[str, float],
    logs: list[MutableMapping[str, Any]],
) -> None:
    # Hygiene: reasons from the fixed set, no key-sized hex anywhere in
    # the metrics, and no bytes or arrays in any log event.
    assert {r.secure_abort_reason for r in status.recent_rounds} <= {"", *REASONS}
    secagg = [k for k in samples if k.startswith("fedgrpc_secagg")]
    assert all(
        set(re.findall(r"(\w+)=", k.partition("{")[2])) <= {"outcome", "reason", "le"}
        for k in secagg
    )
    assert not any(HEX_RUN.search(name_and_labels) for name_and_labels in samples)
    assert not any(
        HEX_RUN.search(line) for line in text.splitlines() if line[:1] == "#"
    )
    assert any(e["event"] == "secagg_round_aborted" for e in logs)
    for event in logs:
        for key, value in event.items():
            assert not isinstance(value, bytes | bytearray | np.ndarray), key
            if isinstance(value, str) and HEX_RUN.search(value):
                assert key.endswith(("sha256", "fingerprint")), (key, value)
