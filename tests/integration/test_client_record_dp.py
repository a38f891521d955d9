"""`DiLoCoClient(record_dp=RecordDP(...))`: DP-SGD clients on a real coordinator.

Two clients train with Opacus DP-SGD in their own unchanged loops, each on
its own thread, against a coordinator on 127.0.0.1 port 0. The ε each
signs into its headers is its ledger's (status shows it per client); the
client with the smaller budget refuses the step that would pass it
(`PrivacyBudgetExceededError`), leaves, and the round it was in closes at
once for the other client instead of waiting out `round_timeout_s`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedgrpc._proto.v1 import admin_pb2
from fedgrpc.client import DiLoCoClient
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.errors import PrivacyBudgetExceededError
from fedgrpc.privacy import PrivacyLedger, RecordDP, Release
from tests.helpers import secure
from tests.helpers.scripted import FAST

H = 5
RECORDS, BATCH = 200, 20  # q = 0.1
TIMEOUT_S = 60.0


@pytest.fixture
def coordinator() -> Iterator[CoordinatorThread]:
    logging.getLogger().setLevel(logging.ERROR)  # dp-accounting's per-order warnings
    config = CoordinatorConfig(
        seed_from_first_client=True, listen="127.0.0.1:0", open_enrollment=True,
        min_clients=1, inner_steps=H, round_timeout_s=TIMEOUT_S,
    )  # fmt: skip
    with serve_in_thread(config) as running:
        yield running


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
    )


def _loader(seed: int) -> DataLoader[Any]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(RECORDS, 6, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=BATCH)


class Silo:
    """One client's whole program: its loop, its RecordDP, what happened."""

    def __init__(
        self, coordinator: CoordinatorThread, private: RecordDP, rounds: int
    ) -> None:
        self.coordinator, self.private, self.rounds = coordinator, private, rounds
        self.address = coordinator.address
        self.seen: list[admin_pb2.GetStatusResponse] = []
        """The coordinator's status after each of its rounds (a throwaway
        key's record is forgotten once it leaves)."""
        self.error: BaseException | None = None
        self.outcomes: list[str | None] = []
        self.client_id = ""
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        try:
            model = _model()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
            model, optimizer, loader = self.private.make_private(
                model, optimizer, _loader(len(self.outcomes) + id(self) % 7)
            )
            with DiLoCoClient(
                self.address, model, config=FAST, record_dp=self.private
            ) as client:
                self.client_id = client.client_id
                self._loop(client, model, optimizer, loader)
        except BaseException as exc:  # reported to the test thread
            self.error = exc

    def _loop(
        self,
        client: DiLoCoClient,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: DataLoader[Any],
    ) -> None:
        while len(self.outcomes) < self.rounds:
            for x, y in loader:  # the user's loop, unchanged
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                if client.step(loss.item(), num_samples=len(y)):
                    self.outcomes.append(client.last_round_outcome)
                    self.seen.append(self.coordinator.status())
                    if len(self.outcomes) == self.rounds:
                        return


def test_dp_clients_report_their_ledger_epsilon_and_one_out_of_budget_leaves_cleanly(
    coordinator: CoordinatorThread,
) -> None:
    # The small budget allows 7 steps at z = 1, q = 0.1: round 1 (5 steps)
    # fits, round 2 is refused at its third step.
    seven, eight = (
        PrivacyLedger(releases=[Release(1.0, 0.1, n)]).epsilon(1e-5) for n in (7, 8)
    )
    small = RecordDP(noise_multiplier=1.0, max_grad_norm=1.0,
                     max_epsilon=(seven + eight) / 2)  # fmt: skip
    planned = RecordDP(target_epsilon=4.0, max_grad_norm=1.0, steps=3 * H)

    brief = Silo(coordinator, small, rounds=3)
    steady = Silo(coordinator, planned, rounds=3)
    for silo in (brief, steady):
        silo.thread.join(timeout=2 * TIMEOUT_S)
        assert not silo.thread.is_alive()

    assert steady.error is None, steady.error
    assert steady.outcomes == ["applied"] * 3
    assert isinstance(brief.error, PrivacyBudgetExceededError)
    assert "max_epsilon" in str(brief.error)
    assert brief.outcomes == ["applied"]
    assert small.steps == 7
    assert planned.steps == 3 * H
    assert planned.epsilon <= 4.0

    rows = {c.client_id: c for c in steady.seen[-1].clients}
    shown = rows[steady.client_id]
    assert (shown.record_dp_epsilon, shown.record_dp_delta, shown.record_dp_steps) == (
        planned.epsilon, 1e-5, 3 * H,
    )  # fmt: skip
    first = next(c for c in brief.seen[0].clients if c.client_id == brief.client_id)
    assert first.record_dp_steps == H  # what its round-1 header signed
    assert first.record_dp_epsilon == pytest.approx(
        PrivacyLedger(releases=[Release(1.0, 0.1, H)]).epsilon(1e-5)
    )
    # Its departure closed round 2 for the other client at once.
    status = coordinator.status()
    assert [r.reason for r in status.recent_rounds if r.reason == "deadline"] == []
    assert all(r.duration_s < TIMEOUT_S / 2 for r in status.recent_rounds)


def test_record_dp_claims_ride_masked_updates_under_secure_aggregation() -> None:
    # Three clients of a secure-aggregation run, each with a ledger (its
    # steps recorded directly: the masked wire path is what is under test).
    with serve_in_thread(secure.config(min_clients=3)) as running:
        ledgers = [RecordDP(noise_multiplier=1.0, max_grad_norm=1.0) for _ in range(3)]
        for steps, private in enumerate(ledgers, start=2):
            private.ledger.record(Release(1.0, 0.1, steps))

        def make(index: int) -> tuple[DiLoCoClient, torch.nn.Module]:
            torch.manual_seed(index)
            model = torch.nn.Linear(secure.IN, secure.OUT)
            client = DiLoCoClient(
                running.address, model, config=FAST, record_dp=ledgers[index]
            )
            return client, model

        with ThreadPoolExecutor(3) as pool:
            clients = list(pool.map(make, range(3)))
        try:
            assert secure.sync_all(clients, seed=1) == ["applied"] * 3
            rows = {c.client_id: c for c in running.status().clients}
            for (client, _), private in zip(clients, ledgers, strict=True):
                row = rows[client.client_id]
                assert row.record_dp_epsilon == private.epsilon > 0
                assert row.record_dp_steps == private.steps
        finally:
            secure.close_all(clients)
