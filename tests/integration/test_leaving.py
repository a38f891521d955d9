"""A client that leaves stops counting for the open round at once.

Real coordinator (127.0.0.1:0) and DiLoCoClients with throwaway keys, H = 1.
The round timeout is 60 s, so a round that waited for a departed client
would close by "deadline"; the assertions read the close reason rather
than the clock.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from tests.helpers import eventually
from tests.helpers.scripted import FAST

WAIT_S = 30.0


@pytest.fixture
def coordinator() -> Iterator[CoordinatorThread]:
    config = CoordinatorConfig(seed_from_first_client=True,
        listen="127.0.0.1:0", open_enrollment=True, min_clients=1, inner_steps=1,
        round_timeout_s=60.0,
    )  # fmt: skip
    with serve_in_thread(config) as running:
        yield running


def _sync_in_thread(client: DiLoCoClient, model: nn.Module) -> threading.Thread:
    """One sync point on a thread (it blocks until the round closes)."""
    with torch.no_grad():
        for param in model.parameters():
            param.sub_(0.01)
    thread = threading.Thread(target=client.step, kwargs={"num_samples": 1})
    thread.start()
    return thread


def _has_pushed(coordinator: CoordinatorThread) -> bool:
    return any(c.updates_accepted for c in coordinator.status().clients)


def test_a_peer_that_closes_lets_the_open_round_close_at_once(
    coordinator: CoordinatorThread,
) -> None:
    # Arrange: two clients; one pushes and waits for the other.
    model = nn.Linear(4, 1)
    first = DiLoCoClient(coordinator.address, model, config=FAST)
    second = DiLoCoClient(coordinator.address, nn.Linear(4, 1), config=FAST)
    try:
        waiting = _sync_in_thread(first, model)
        eventually(lambda: _has_pushed(coordinator), WAIT_S)

        # Act: the other one leaves without pushing.
        second.close()

        # Assert: the round closed because everyone left was in, not by its deadline.
        waiting.join(timeout=WAIT_S)
        assert not waiting.is_alive()
        assert first.last_round_outcome == "applied"
        closed = coordinator.running.runtime.engine.history[-1]
        assert closed.reason == "all connected clients committed"
    finally:
        first.close()
        second.close()


def test_a_client_dropped_without_close_leaves_when_collected(
    coordinator: CoordinatorThread,
) -> None:
    # Arrange: a client is made, then its only reference goes away, as when a
    # notebook cell that creates it runs a second time.
    client: DiLoCoClient | None = DiLoCoClient(
        coordinator.address, nn.Linear(4, 1), config=FAST
    )
    assert client is not None
    client_id = client.client_id
    eventually(lambda: any(c.connected for c in coordinator.status().clients), WAIT_S)

    # Act
    client = None
    gc.collect()

    # Assert: its session ended with a leave, and (a throwaway key) it is gone.
    eventually(
        lambda: client_id not in {c.client_id for c in coordinator.status().clients},
        WAIT_S,
    )
