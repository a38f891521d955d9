"""The stream caps: derived from max_clients, counted per connection and in total."""

from __future__ import annotations

import pytest

from fedgrpc.config import CoordinatorConfig
from fedgrpc.config.limits import STREAM_SLACK, STREAMS_PER_CLIENT
from fedgrpc.coordinator.services.stream_guard import StreamGuard
from fedgrpc.errors import ConfigError, TooLargeError


def test_stream_caps_default_to_four_per_admitted_client_and_half_per_connection() -> (
    None
):
    limits = CoordinatorConfig(max_clients=100).stream_limits(100)
    assert limits.total == STREAMS_PER_CLIENT * 100 + STREAM_SLACK
    assert limits.per_connection == limits.total // 2


def test_explicit_stream_caps_win_and_a_connection_never_exceeds_the_total() -> None:
    config = CoordinatorConfig(max_streams_total=10, max_streams_per_connection=50)
    assert config.stream_limits(config.max_clients).per_connection == 10


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("first_message_timeout_s", 0.0),
        ("stream_idle_timeout_s", -1.0),
        ("pull_timeout_s", 0.0),
        ("metrics_read_timeout_s", 0.0),
        ("max_streams_total", -1),
        ("max_streams_per_connection", -1),
        ("metrics_max_connections", 0),
    ],
)
def test_a_bad_limit_is_refused_naming_the_setting(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        CoordinatorConfig().replace(**{field: value})


def test_a_guard_refuses_past_each_cap_and_gives_slots_back() -> None:
    guard = StreamGuard(
        CoordinatorConfig(max_streams_total=3, max_streams_per_connection=2)
    )
    first = guard.acquire("ipv4:127.0.0.1:1", "Session")
    guard.acquire("ipv4:127.0.0.1:1", "PushUpdate")
    with pytest.raises(TooLargeError, match="max_streams_per_connection=2"):
        guard.acquire("ipv4:127.0.0.1:1", "PullModel")
    guard.acquire("ipv4:127.0.0.1:2", "Session")
    with pytest.raises(TooLargeError, match="max_streams_total=3"):
        guard.acquire("ipv4:127.0.0.1:3", "Session")
    first()
    assert guard.open_total == 2
    assert guard.open_on("ipv4:127.0.0.1:1") == 1
    guard.acquire("ipv4:127.0.0.1:3", "Session")  # a slot came back
