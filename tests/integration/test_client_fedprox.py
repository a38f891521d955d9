"""FedProx clients against a real in-process coordinator on 127.0.0.1 port 0.

Two `DiLoCoClient(config=ClientConfig(proximal_mu=...))` threads in one
process (so two process-wide hooks coexist) train plain SGD loops that never
mention the proximal term. Every inner step is checked against the closed
form w' = w - lr * (grad F(w) + mu * (w - w_global)), with w_global the
weights the client last loaded (at join, then after each applied round).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread

H = 3
ROUNDS = 2
MU = 0.5
LR = 0.1


@pytest.fixture
def coordinator() -> Iterator[CoordinatorThread]:
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=2,
        inner_steps=H,
        round_timeout_s=30.0,
        chunk_bytes=1024,
    )
    with serve_in_thread(config) as running:
        yield running


@dataclass
class Trace:
    """What one client saw: the largest closed-form error, and its syncs."""

    worst_error: float = 0.0
    largest_term: float = 0.0
    outcomes: list[str | None] = field(default_factory=list)
    final: torch.Tensor | None = None
    error: BaseException | None = None


def _flat(tensors: Iterator[torch.Tensor] | list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _train(address: str, index: int, trace: Trace) -> None:
    try:
        torch.manual_seed(10 + index)
        model = nn.Linear(12, 6)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        data = torch.Generator().manual_seed(index)
        config = ClientConfig(
            name=f"fedprox-{index}",
            rpc_timeout_s=10,
            round_wait_s=30,
            connect_timeout_s=10,
            proximal_mu=MU,
        )
        with DiLoCoClient(address, model, inner_steps=H, config=config) as client:
            anchor = _flat(model.parameters()).clone()  # the joined global weights
            for _ in range(ROUNDS * H):
                x = torch.randn(8, 12, generator=data) + index  # heterogeneous data
                loss = (model(x) - x[:, :6]).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                w = _flat(model.parameters()).clone()
                plain = _flat([p.grad for p in model.parameters()])  # type: ignore[misc]
                optimizer.step()
                term = MU * (w - anchor)
                expected = w - LR * (plain + term)
                error = (_flat(model.parameters()) - expected).abs().max().item()
                trace.worst_error = max(trace.worst_error, error)
                trace.largest_term = max(trace.largest_term, term.abs().max().item())
                if client.step(loss, num_samples=8):
                    trace.outcomes.append(client.last_round_outcome)
                    anchor = _flat(model.parameters()).clone()  # the new global
            trace.final = _flat(model.parameters()).clone()
    except BaseException as exc:
        trace.error = exc


def test_fedprox_clients_train_with_the_closed_form_term_and_sync(
    coordinator: CoordinatorThread,
) -> None:
    traces = [Trace(), Trace()]
    threads = [
        threading.Thread(target=_train, args=(coordinator.address, i, trace))
        for i, trace in enumerate(traces)
    ]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    for trace in traces:
        assert trace.error is None, repr(trace.error)
        assert trace.outcomes == ["applied"] * ROUNDS
        assert trace.worst_error < 1e-6
        assert trace.largest_term > 1e-3  # the term was really there to check
    assert traces[0].final is not None
    assert traces[1].final is not None
    torch.testing.assert_close(traces[0].final, traces[1].final, rtol=0, atol=0)
