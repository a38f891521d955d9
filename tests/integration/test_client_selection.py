"""Client selection end to end: real coordinator, real DiLoCo clients, real gRPC.

Four clients, two chosen per round from the round nonce. Those left out
hear it in their own RoundStarted, keep training, and push when a later
round selects them: that update spans the rounds they sat out, against the
base version they last pulled, and the coordinator applies it.
"""

from __future__ import annotations

import threading
import time

import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.client.sync import SyncOutcome
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from tests.helpers.raw import PB
from tests.helpers.scripted import FAST

TARGET_VERSION = 4
MAX_VERSION = 40
"""Selection is random, so the same pair can win several rounds running
(1 in 216 for three rounds): the clients go on past TARGET_VERSION until a
sat-out client's update has been applied, up to this many rounds (the chance
of none by then is negligible)."""
MAX_SYNC_POINTS = 4000
"""Bound on each client's loop (sat-out sync points return at once)."""


def _spanned(seen: list[SyncOutcome]) -> bool:
    """Whether a push applied after this client had sat a round out."""
    return "not_selected" in seen and "applied" in seen[seen.index("not_selected") :]


def _train(
    coordinator: CoordinatorThread,
    seed: int,
    outcomes: list[SyncOutcome],
    spanned: threading.Event,
) -> None:
    torch.manual_seed(seed)
    model = nn.Linear(3, 1)
    with DiLoCoClient(coordinator.address, model, inner_steps=1, config=FAST) as c:
        for _ in range(MAX_SYNC_POINTS):
            version = coordinator.status().model_version
            if version >= MAX_VERSION or (
                version >= TARGET_VERSION and spanned.is_set()
            ):
                return
            with torch.no_grad():
                model.weight.add_(0.01)  # a known local step each inner step
            c.step(0.5 + seed, num_samples=1)
            assert c.last_round_outcome is not None
            outcomes.append(c.last_round_outcome)
            if _spanned(outcomes):
                spanned.set()
            if c.last_round_outcome == "not_selected":
                time.sleep(0.02)  # keep training (here: idle) until selected


def test_two_of_four_per_round_and_sat_out_clients_span_rounds_when_selected() -> None:
    config = CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, min_clients=2,
        selection="random", clients_per_round=2, inner_steps=1,
        round_timeout_s=5.0, outer_optimizer="fedavg", seed_from_first_client=True,
    )  # fmt: skip
    with serve_in_thread(config) as coordinator:
        outcomes: list[list[SyncOutcome]] = [[] for _ in range(4)]
        spanned_seen = threading.Event()
        threads = [
            threading.Thread(
                target=_train, args=(coordinator, i, outcomes[i], spanned_seen)
            )
            for i in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not any(t.is_alive() for t in threads)
        status = coordinator.status()
    assert status.model_version >= TARGET_VERSION
    applied = [r for r in status.recent_rounds if r.outcome == PB.ROUND_OUTCOME_APPLIED]
    assert len(applied) >= TARGET_VERSION
    for summary in applied:
        assert len(summary.selected_clients) == 2  # status shows who was chosen
        assert summary.num_updates == 2
    assert all("missed" not in seen for seen in outcomes)  # no spanning push refused
    spanned = [seen for seen in outcomes if _spanned(seen)]
    assert spanned, outcomes  # some client sat out, then its update was applied
