"""The reconnect backoff schedule and which faults count as transient."""

from __future__ import annotations

import dataclasses
import random

import pytest

from fedgrpc import errors
from fedgrpc.client.connection.channel import JITTER_LOW, Backoff
from fedgrpc.client.reconnect import is_transient
from fedgrpc.config import ClientConfig


def test_backoff_doubles_with_jitter_and_stays_under_its_cap() -> None:
    # Arrange
    backoff = Backoff(initial_s=0.5, max_s=4.0, rng=random.Random(7))

    # Act
    delays = [backoff.next_delay() for _ in range(8)]

    # Assert: nominal 0.5, 1, 2, 4, 4, ...; each drawn in [JITTER_LOW, 1] x it.
    nominal = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for delay, cap in zip(delays, nominal, strict=True):
        assert JITTER_LOW * cap <= delay <= cap
    assert len(set(delays)) == len(delays)  # jittered, not a fixed ladder
    assert max(delays) <= 4.0


def test_backoff_is_reproducible_with_a_seeded_rng_and_resets() -> None:
    first = Backoff(0.1, 10.0, rng=random.Random(3))
    second = Backoff(0.1, 10.0, rng=random.Random(3))
    run = [first.next_delay() for _ in range(5)]
    assert run == [second.next_delay() for _ in range(5)]

    first.reset()

    assert first.next_delay() <= 0.1


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (errors.CoordinatorUnavailableError("gone"), True),
        (errors.ShuttingDownError("draining"), True),
        (errors.UnknownClientError("token unknown after a restart"), True),
        (errors.IncompatibleClientError("codec"), False),
        (errors.InvalidUpdateError("shape"), False),
        (errors.UntrustedCoordinatorError("other key"), False),
        (errors.FedGrpcError("INTERNAL"), False),
    ],
)
def test_only_faults_a_rejoin_can_cure_are_transient(
    error: errors.FedGrpcError, transient: bool
) -> None:
    assert is_transient(error) is transient


@pytest.mark.parametrize(
    "field", ["reconnect_initial_s", "reconnect_max_s", "reconnect_give_up_s"]
)
def test_reconnect_settings_must_be_positive(field: str) -> None:
    with pytest.raises(errors.ConfigError, match=field):
        dataclasses.replace(ClientConfig(), **{field: 0.0})  # type: ignore[arg-type]  # mypy reads ** as every field's type


def test_reconnect_cap_below_first_delay_is_refused() -> None:
    with pytest.raises(errors.ConfigError, match="reconnect_max_s"):
        ClientConfig(reconnect_initial_s=5.0, reconnect_max_s=1.0)
