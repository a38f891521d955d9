"""Round modes end to end: real coordinator, real DiLoCo clients of unequal speed.

`deadline`: each client trains until the round's training time is up, so a
client ten times faster runs several times more inner steps per round, and
every round still takes both updates. `buffered_async`: rounds close at
K = 2 updates, so two fast clients set the pace, and the slow client's
updates land in later rounds, stale and scaled. Both report goodput.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from fedgrpc._proto.v1 import admin_pb2
from fedgrpc.cli_ops import format_status
from fedgrpc.client import DiLoCoClient
from fedgrpc.client.admin import fetch_status
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from tests.helpers.raw import PB
from tests.helpers.scripted import FAST

MAX_STEPS = 20_000
"""Bound on each client's loop (the run ends long before at these speeds)."""


@dataclass
class Trainer:
    """One client's loop: `step_s` of sleep per inner step (its speed)."""

    step_s: float
    seed: int
    steps_per_sync: list[int] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    error: BaseException | None = None

    def run(self, coordinator: CoordinatorThread) -> None:
        try:
            torch.manual_seed(self.seed)
            model = nn.Linear(3, 1)
            with DiLoCoClient(coordinator.address, model, config=FAST) as client:
                steps = 0
                for _ in range(MAX_STEPS):
                    time.sleep(self.step_s)
                    with torch.no_grad():
                        model.weight.add_(0.001)  # a known local step
                    steps += 1
                    if client.step(0.5, num_samples=1):
                        self.steps_per_sync.append(steps)
                        self.outcomes.append(str(client.last_round_outcome))
                        steps = 0
                    if client.finished:
                        return
        except BaseException as exc:  # surfaced by the test thread
            self.error = exc


def _run(
    config: CoordinatorConfig, trainers: list[Trainer]
) -> tuple[admin_pb2.GetStatusResponse, str]:
    """The final status, and `fedgrpc status`'s text of it."""
    with serve_in_thread(config) as coordinator:
        threads = [
            threading.Thread(target=t.run, args=(coordinator,), daemon=True)
            for t in trainers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        for trainer in trainers:
            assert trainer.error is None, repr(trainer.error)
        assert not any(t.is_alive() for t in threads), "a client never finished"
        text = format_status("here", fetch_status(coordinator.address))
        return coordinator.status(), text


def _mean(values: list[int]) -> float:
    return sum(values) / len(values)


def test_deadline_rounds_let_a_fast_client_train_more_steps() -> None:
    config = CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, seed_from_first_client=True,
        min_clients=2, round_mode="deadline", round_duration_s=0.8,
        round_timeout_s=10, max_rounds=4, outer_optimizer="fedavg",
    )  # fmt: skip
    fast, slow = Trainer(0.002, 0), Trainer(0.03, 1)
    status, text = _run(config, [fast, slow])
    assert "rounds: deadline (0.8 s of training per round)  goodput 100.0%" in text

    applied = [r for r in status.recent_rounds if r.outcome == PB.ROUND_OUTCOME_APPLIED]
    assert len(applied) == 4
    assert all(r.num_updates == 2 for r in applied)
    # Rounds 2..4 (round 1's window started before both had joined): the
    # fast client's 15x shorter steps buy it several times the steps.
    fast_steps, slow_steps = fast.steps_per_sync[1:], slow.steps_per_sync[1:]
    assert fast_steps
    assert slow_steps
    assert _mean(fast_steps) >= 3 * _mean(slow_steps), (fast_steps, slow_steps)
    # No client trains past the round's 0.8 s by more than a few steps.
    assert max(slow_steps) <= 0.8 / 0.03 + 5, slow_steps
    assert status.round_mode == "deadline"
    assert status.goodput == pytest.approx(1.0)  # every round applied
    assert status.compute_offered_s > 0


@pytest.mark.parametrize("codec", ["dense:fp32", "topk:0.5:int8"])
def test_buffered_async_rounds_are_set_by_the_fast_clients(codec: str) -> None:
    # top-k: a push retried into the next round goes back to the error
    # feedback residual first, and is sent again from there.
    config = CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, seed_from_first_client=True,
        min_clients=2, round_mode="buffered_async", buffer_size=2,
        max_staleness=16, inner_steps=10, round_timeout_s=10, max_rounds=12,
        outer_optimizer="fedavg", codec=codec,
    )  # fmt: skip
    trainers = [Trainer(0.002, 0), Trainer(0.002, 1), Trainer(0.04, 2)]
    status, text = _run(config, trainers)
    assert "rounds: buffered_async (K=2, max_staleness 16)  goodput" in text
    header = next(line for line in text.splitlines() if "mean loss" in line)
    assert header.split()[-1] == "staleness"  # the rounds table's last column

    rounds = list(status.recent_rounds)
    assert len(rounds) == 12
    assert all(r.outcome == PB.ROUND_OUTCOME_APPLIED for r in rounds)
    # The slow client pushed fewer times, and at least one of its updates
    # landed in a round past the version it trained from.
    slow_pushes = trainers[2].outcomes.count("applied")
    assert slow_pushes >= 1
    assert slow_pushes < min(t.outcomes.count("applied") for t in trainers[:2])
    assert max(r.max_staleness for r in rounds) >= 1
    assert 0 < status.goodput <= 1
