"""The server's call backlog holds a whole cohort arriving at once (issue 6)."""

from __future__ import annotations

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.server import CALLS_PER_CLIENT, server_options

SOFT = "grpc.server.max_pending_requests"
HARD = "grpc.server.max_pending_requests_hard_limit"


def test_call_backlog_holds_a_session_and_a_push_from_every_client() -> None:
    # Arrange: 2,000 clients, past grpc core's default backlog of 1,000 calls.
    config = CoordinatorConfig(max_clients=2000)

    # Act
    options = dict(server_options(config))

    # Assert: no call of the burst meets grpc's random early refusal.
    assert options[SOFT] == CALLS_PER_CLIENT * 2000
    assert options[SOFT] >= 2 * 2000
    assert options[HARD] > options[SOFT]


def test_call_backlog_is_never_below_grpc_default() -> None:
    # Arrange
    config = CoordinatorConfig(max_clients=10)

    # Act
    options = dict(server_options(config))

    # Assert
    assert options[SOFT] == 1000
    assert options[HARD] == 2000
