"""Streaming DiLoCo end to end: real coordinator, real DiLoCo clients in threads.

Each sync point moves one fragment (1/P of the model) each way, the client
trains on while it is in flight and merges it `streaming_overlap_steps`
later; every round applies with both clients, the uplink and downlink per
sync are 1/P of the dense bytes, and at the end both clients hold the
coordinator's final model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from tests.helpers.raw import PB
from tests.helpers.scripted import FAST

MAX_STEPS = 400
P, H = 2, 4
ROUNDS = 6


@dataclass
class Trainer:
    seed: int
    outcomes: list[str] = field(default_factory=list)
    final: dict[str, torch.Tensor] = field(default_factory=dict)
    start: torch.Tensor | None = None
    bytes_received: int = 0
    bytes_sent: int = 0
    evals: list[int] = field(default_factory=list)
    error: BaseException | None = None

    def run(self, address: str) -> None:
        try:
            torch.manual_seed(self.seed)
            model = nn.Linear(8, 4)

            def evaluate(m: nn.Module, version: int) -> float:
                self.evals.append(version)
                return float(next(m.parameters()).sum())

            with DiLoCoClient(address, model, config=FAST, evaluate=evaluate) as client:
                self.start = model.weight.detach().clone()
                for _ in range(MAX_STEPS):
                    with torch.no_grad():
                        model.weight.add_(0.01)  # a known local step
                        model.bias.add_(0.01)
                    if client.step(0.5, num_samples=1):
                        self.outcomes.append(str(client.last_round_outcome))
                    if client.finished:
                        break
                self.final = client.global_state_dict()
                self.bytes_received = client.bytes_received
                self.bytes_sent = client.bytes_sent
                assert torch.equal(model.weight, self.final["weight"])
        except BaseException as exc:
            self.error = exc


@pytest.mark.parametrize(
    ("codec", "overlap"), [("dense:fp32", 1), ("topk:0.5:int8", 0)]
)
def test_streaming_clients_sync_one_fragment_per_sync_point(
    codec: str, overlap: int
) -> None:
    config = CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, seed_from_first_client=True,
        min_clients=2, round_mode="streaming", fragments=P, inner_steps=H,
        streaming_overlap_steps=overlap, streaming_mix=0.5, codec=codec,
        round_timeout_s=20, max_rounds=ROUNDS, outer_optimizer="nesterov",
        outer_lr=0.7,
    )  # fmt: skip
    trainers = [Trainer(0), Trainer(1)]
    with serve_in_thread(config) as coordinator:
        threads = [
            threading.Thread(target=t.run, args=(coordinator.address,), daemon=True)
            for t in trainers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        for trainer in trainers:
            assert trainer.error is None, repr(trainer.error)
        assert not any(t.is_alive() for t in threads), "a client never finished"
        status = coordinator.status()
    applied = [r for r in status.recent_rounds if r.outcome == PB.ROUND_OUTCOME_APPLIED]
    assert len(applied) == ROUNDS
    assert all(r.num_updates == 2 for r in applied)
    a, b = trainers
    assert a.final
    assert b.final
    for name in a.final:
        assert torch.equal(a.final[name], b.final[name])
    # Every weight moved up (the clients only ever added), in both fragments.
    assert a.start is not None
    assert bool((a.final["weight"] > a.start).all())
    if overlap:
        assert a.outcomes.count("in_flight") == ROUNDS
        assert a.outcomes.count("applied") == ROUNDS
    else:
        assert a.outcomes.count("applied") == ROUNDS
    model_bytes = (8 * 4 + 4) * 4
    # Downlink: one full pull at join, then one fragment per round.
    assert a.bytes_received == model_bytes + ROUNDS * model_bytes // P
    # Evaluations ran on the global model of every version.
    assert a.evals[-1] == ROUNDS
