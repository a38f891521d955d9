"""Clients heartbeat at the coordinator's interval, not only their own.

A coordinator expecting heartbeats every 0.2 s evicts a client silent for
its 1 s session timeout; a client on the default 5 s period would be
evicted while it trains, unless it follows RoundConfig.heartbeat_interval_s.
"""

from __future__ import annotations

import time

import torch

import fedgrpc
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread


def test_a_default_client_is_not_evicted_by_a_coordinator_with_short_heartbeats() -> (
    None
):
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=1,
        inner_steps=1,
        heartbeat_interval_s=0.2,
        session_timeout_s=1.0,
    )
    with (
        serve_in_thread(config) as coordinator,
        fedgrpc.DiLoCoClient(coordinator.address, torch.nn.Linear(4, 2)) as client,
    ):
        assert fedgrpc.ClientConfig().heartbeat_interval_s >= 5.0  # the default
        registry = coordinator.running.runtime.registry
        time.sleep(3 * config.session_timeout_s)  # "training", no RPC of ours
        connected = [c.client_id for c in registry.connected()]
        assert connected == [client.client_id]
        assert client.step() is True  # and its session still works
