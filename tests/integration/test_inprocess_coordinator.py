"""`fedgrpc.Coordinator`: the serve pipeline in-process, driven from sync code.

Real grpc server on 127.0.0.1 port 0, real DiLoCoClient threads; the
status it returns is plain domain data, never protobuf.
"""

from __future__ import annotations

import socket
import threading

import pytest
import torch
from torch import nn

import fedgrpc
from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.domain.status import CoordinatorStatus, RoundSummary
from fedgrpc.errors import ConfigError

H = 2


def _config(**overrides: object) -> CoordinatorConfig:
    fields: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "open_enrollment": True,
        "min_clients": 2,
        "inner_steps": H,
        "round_timeout_s": 30.0,
        "chunk_bytes": 1024,
        "seed_from_first_client": True,  # the first DiLoCoClient's weights
    }
    fields.update(overrides)
    return CoordinatorConfig(**fields)  # type: ignore[arg-type]


def _train(
    address: str,
    index: int,
    syncs: int,
    errors: list[BaseException],
    hold: threading.Event | None = None,
) -> None:
    """`syncs` sync points; then, with `hold`, stay joined until it is set
    (a throwaway key's leave is final: the coordinator forgets the client)."""
    try:
        torch.manual_seed(index)
        model = nn.Linear(4, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        config = ClientConfig(rpc_timeout_s=10, round_wait_s=60, connect_timeout_s=10)
        with DiLoCoClient(address, model, inner_steps=H, config=config) as client:
            done = 0
            while done < syncs:
                x = torch.randn(8, 4)
                loss = (model(x) - x[:, :2]).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if client.step(loss, num_samples=8):
                    done += 1
            if hold is not None:
                hold.wait(timeout=120)
    except BaseException as exc:
        errors.append(exc)


def test_coordinator_runs_rounds_and_reports_typed_status() -> None:
    errors: list[BaseException] = []
    hold = threading.Event()  # clients stay joined until the status is read
    with fedgrpc.Coordinator(_config()) as coordinator:
        host, port = coordinator.address.rsplit(":", 1)
        assert host == "127.0.0.1"
        assert int(port) > 0  # port 0 was resolved
        threads = [
            threading.Thread(
                target=_train, args=(coordinator.address, i, 2, errors, hold)
            )
            for i in range(2)
        ]
        for thread in threads:
            thread.start()
        coordinator.wait_for_round(2, timeout=120)
        status = coordinator.status()
        hold.set()
        for thread in threads:
            thread.join(timeout=120)
    assert errors == []
    assert isinstance(status, CoordinatorStatus)
    assert status.rounds_closed >= 2
    assert all(isinstance(r, RoundSummary) for r in status.rounds)
    assert [r.applied for r in status.rounds[:2]] == [True, True]
    assert status.model_version >= 2
    assert status.num_parameters == 4 * 2 + 2
    assert {c.updates_accepted for c in status.clients} == {2}


def test_start_returns_the_bound_address_and_stop_is_idempotent() -> None:
    coordinator = fedgrpc.Coordinator(_config())
    address = coordinator.start()
    assert address == coordinator.address
    status = coordinator.status()
    assert status.phase == "waiting_for_model"
    assert status.rounds == ()
    coordinator.stop()
    coordinator.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        coordinator.status()
    with pytest.raises(RuntimeError, match="already"):
        coordinator.start()


def test_wait_for_round_raises_timeout_error_naming_the_round() -> None:
    with (
        fedgrpc.Coordinator(_config()) as coordinator,
        pytest.raises(TimeoutError, match="round 1"),
    ):
        coordinator.wait_for_round(1, timeout=0.3)


def test_a_port_in_use_is_a_config_error_at_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        coordinator = fedgrpc.Coordinator(_config(listen=f"127.0.0.1:{port}"))
        with pytest.raises(ConfigError, match="cannot listen"):
            coordinator.start()


class _CountingSGD:
    """A user's OuterOptimizer given as an object: w <- w - g, counting steps."""

    name = "counting_sgd"

    def __init__(self) -> None:
        self.steps = 0

    def step(self, params: torch.Tensor, pseudo_gradient: torch.Tensor) -> None:
        params.sub_(pseudo_gradient)
        self.steps += 1

    def state_dict(self) -> dict[str, torch.Tensor | float | int]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, torch.Tensor | float | int]) -> None:
        self.steps = int(state["steps"])


def test_a_user_outer_optimizer_object_runs_an_in_process_coordinators_rounds() -> None:
    errors: list[BaseException] = []
    optimizer = _CountingSGD()
    with fedgrpc.Coordinator(_config(), outer_optimizer=optimizer) as coordinator:
        threads = [
            threading.Thread(target=_train, args=(coordinator.address, i, 2, errors))
            for i in range(2)
        ]
        for thread in threads:
            thread.start()
        coordinator.wait_for_round(2, timeout=60)
        for thread in threads:
            thread.join(timeout=60)

    assert not errors
    assert optimizer.steps >= 2  # the object itself took every applied round


def test_a_user_aggregator_without_the_protocol_is_refused_at_start() -> None:
    coordinator = fedgrpc.Coordinator(_config(), aggregator=object())

    with pytest.raises(ConfigError, match="aggregator"):
        coordinator.start()
    coordinator.stop()
