"""DiLoCoClient against a real in-process coordinator on 127.0.0.1 port 0.

The numerics are checked against torch's own Nesterov SGD applied to the
sample-weighted mean pseudo-gradient, computed in the test from what each
client held before and after every sync point.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from fedgrpc import errors
from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from tests.helpers.scripted import GIVE_UP_FAST

FAST = ClientConfig(rpc_timeout_s=10, round_wait_s=30, connect_timeout_s=10)
H = 3
ROUNDS = 2
IN, OUT = 40, 20
"""820 parameters: 3,280 bytes, so several 1 KiB chunks each way."""


@pytest.fixture
def coordinator(request: pytest.FixtureRequest) -> Iterator[CoordinatorThread]:
    overrides = getattr(request, "param", {})
    settings = {
        "min_clients": 2,
        "inner_steps": H,
        "round_timeout_s": 30.0,
        "chunk_bytes": 1024,
        "weighting": "samples",  # plain FedAvg: clients of 1 and 3 samples
    }
    settings.update(overrides)
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        **settings,  # type: ignore[arg-type]
    )
    with serve_in_thread(config) as running:
        yield running


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


@dataclass
class Trace:
    """What one client held around its sync points."""

    start: torch.Tensor | None = None
    before_sync: list[torch.Tensor] = field(default_factory=list)
    after_sync: list[torch.Tensor] = field(default_factory=list)
    outcomes: list[str | None] = field(default_factory=list)
    error: BaseException | None = None


def _train(address: str, index: int, samples: int, trace: Trace) -> None:
    try:
        torch.manual_seed(100 + index)  # different init: only the seed counts
        model = nn.Linear(IN, OUT)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        data = torch.Generator().manual_seed(index)
        config = ClientConfig(
            name=f"worker-{index}",
            rpc_timeout_s=10,
            round_wait_s=30,
            connect_timeout_s=10,
        )
        with DiLoCoClient(address, model, inner_steps=H, config=config) as client:
            trace.start = _flat(model)
            for _ in range(ROUNDS * H):
                inputs = torch.randn(8, IN, generator=data)
                loss = (model(inputs) - inputs[:, :OUT]).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                local = _flat(model)
                if client.step(loss, num_samples=samples):
                    trace.before_sync.append(local)
                    trace.after_sync.append(_flat(model))
                    trace.outcomes.append(client.last_round_outcome)
            assert client.rounds_completed == ROUNDS
            assert client.model_version == ROUNDS
            num_bytes = (IN + 1) * OUT * 4
            assert client.bytes_received == (1 + ROUNDS) * num_bytes
    except BaseException as exc:
        trace.error = exc


def test_two_clients_converge_to_torch_nesterov_on_the_weighted_mean(
    coordinator: CoordinatorThread,
) -> None:
    # Arrange: two clients on threads; client 1 reports 3x the samples.
    traces = [Trace(), Trace()]
    samples = [1, 3]
    threads = [
        threading.Thread(target=_train, args=(coordinator.address, i, samples[i], t))
        for i, t in enumerate(traces)
    ]

    # Act
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    # Assert: same start, same weights after every round, equal to the reference.
    for trace in traces:
        assert trace.error is None, repr(trace.error)
        assert trace.outcomes == ["applied"] * ROUNDS
    assert traces[0].start is not None
    assert traces[1].start is not None
    torch.testing.assert_close(traces[0].start, traces[1].start, rtol=0, atol=0)
    reference = nn.Parameter(traces[0].start.clone())
    outer = torch.optim.SGD([reference], lr=0.7, momentum=0.9, nesterov=True)
    global_weights = traces[0].start.clone()
    for r in range(ROUNDS):
        deltas = [global_weights - t.before_sync[r] for t in traces]
        reference.grad = (deltas[0] * samples[0] + deltas[1] * samples[1]) / 4
        outer.step()
        global_weights = reference.detach().clone()
        torch.testing.assert_close(
            traces[0].after_sync[r], traces[1].after_sync[r], rtol=0, atol=0
        )
        torch.testing.assert_close(traces[0].after_sync[r], global_weights)


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fp16 = nn.Parameter(torch.randn(3, 5).to(torch.float16))
        self.bf16 = nn.Parameter(torch.randn(7).to(torch.bfloat16))
        self.fp64 = nn.Parameter(torch.randn(2, 2, dtype=torch.float64))
        self.scalar = nn.Parameter(torch.tensor(0.5))
        self.scalar64 = nn.Parameter(torch.tensor(-1.25, dtype=torch.float64))


@pytest.mark.parametrize(
    "coordinator", [{"min_clients": 1, "inner_steps": 2}], indirect=True
)
def test_mixed_dtypes_and_scalars_round_trip_with_dtypes_preserved(
    coordinator: CoordinatorThread,
) -> None:
    # Arrange
    torch.manual_seed(0)
    model = Mixed()
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    pointers = {name: p.data_ptr() for name, p in model.named_parameters()}
    seeded = {name: p.detach().clone() for name, p in model.named_parameters()}

    with DiLoCoClient(coordinator.address, model, config=FAST) as client:
        # Act 1: join seeds and loads back (float64 goes through fp32 master).
        for name, param in model.named_parameters():
            assert param.dtype == dtypes[name]
            assert param.data_ptr() == pointers[name]
            expected = seeded[name].float().to(dtypes[name])
            torch.testing.assert_close(param.detach(), expected, rtol=0, atol=0)
        master = _flat(model)

        # Act 2: move the weights, run one round alone (min_clients=1).
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.5)
        local = _flat(model)
        assert not client.step()
        assert client.step()

    # Assert: dtypes kept and values equal the fp32 reference cast back.
    assert client.last_round_outcome == "applied"
    reference = nn.Parameter(master.clone())
    reference.grad = master - local
    torch.optim.SGD([reference], lr=0.7, momentum=0.9, nesterov=True).step()
    offset = 0
    for name, param in model.named_parameters():
        assert param.dtype == dtypes[name], name
        assert param.data_ptr() == pointers[name], name
        n = param.numel()
        expected = reference.detach()[offset : offset + n].view(param.shape)
        torch.testing.assert_close(param.detach(), expected.to(param.dtype))
        offset += n


@pytest.mark.parametrize(
    "coordinator", [{"min_clients": 2, "round_timeout_s": 0.5}], indirect=True
)
def test_round_below_quorum_is_skipped_and_local_weights_are_kept(
    coordinator: CoordinatorThread,
) -> None:
    model = nn.Linear(3, 1)
    with DiLoCoClient(coordinator.address, model, config=FAST) as client:
        with torch.no_grad():
            model.weight.add_(1.0)
        local = _flat(model)

        for _ in range(H):
            synced = client.step(0.25)

        assert synced
        assert client.last_round_outcome == "skipped"
        assert client.model_version == 0
        torch.testing.assert_close(_flat(model), local, rtol=0, atol=0)


@pytest.mark.parametrize(
    "coordinator", [{"min_clients": 1, "round_timeout_s": 0.5}], indirect=True
)
def test_client_behind_the_federation_pulls_instead_of_pushing(
    coordinator: CoordinatorThread,
) -> None:
    # Arrange: a pushes alone; the round waits for connected b, then applies.
    a_model, b_model = nn.Linear(3, 1), nn.Linear(3, 1)
    with (
        DiLoCoClient(coordinator.address, a_model, config=FAST) as a,
        DiLoCoClient(coordinator.address, b_model, config=FAST) as b,
    ):
        with torch.no_grad():
            a_model.bias.add_(1.0)
        for _ in range(H):
            a.step()
        assert a.last_round_outcome == "applied"

        # Act: b reaches its sync point on the old version.
        for _ in range(H):
            b.step()

        # Assert
        assert b.last_round_outcome == "stale"
        assert b.model_version == a.model_version == 1
        torch.testing.assert_close(_flat(b_model), _flat(a_model), rtol=0, atol=0)


def test_inner_steps_that_differ_from_the_coordinator_are_incompatible(
    coordinator: CoordinatorThread,
) -> None:
    with pytest.raises(errors.IncompatibleClientError, match="inner_steps"):
        DiLoCoClient(coordinator.address, nn.Linear(2, 1), inner_steps=H + 1)


def test_a_different_model_is_rejected_at_join_with_model_mismatch_error(
    coordinator: CoordinatorThread,
) -> None:
    # ModelMismatchError is what fedgrpc exports for this; it is also an
    # InvalidUpdateError, so code catching that keeps working.
    with (
        DiLoCoClient(coordinator.address, nn.Linear(2, 1), config=FAST),
        pytest.raises(errors.ModelMismatchError, match="architecture"),
    ):
        DiLoCoClient(coordinator.address, nn.Linear(3, 1), config=FAST)


def test_unreachable_coordinator_raises_unavailable_after_connect_timeout() -> None:
    # A bound socket that never listens: connections are refused, and no
    # other process can take the port while the test runs.
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed_port.getsockname()[1]}"
        config = ClientConfig(connect_timeout_s=0.5, rpc_timeout_s=0.5)

        with pytest.raises(errors.CoordinatorUnavailableError, match=address):
            DiLoCoClient(address, nn.Linear(2, 1), config=config)


def test_coordinator_shutdown_surfaces_as_shutting_down_after_give_up(
    coordinator: CoordinatorThread,
) -> None:
    # Arrange: alone under min_clients=2, the round can only end by shutdown.
    client = DiLoCoClient(coordinator.address, nn.Linear(2, 1), config=GIVE_UP_FAST)
    for _ in range(H - 1):
        client.step()
    stopper = threading.Timer(0.3, coordinator.stop)

    # Act
    stopper.start()
    try:
        with pytest.raises(errors.ShuttingDownError, match="shutting down"):
            client.step()
    finally:
        stopper.join()
        client.close()
