"""`ClientConfig(max_update_norm=B)`: what a client sends is clipped to ‖·‖₂ <= B.

Real coordinators on 127.0.0.1 port 0, real DiLoCoClients (H = 1) pushing
pseudo-gradients the test chooses, outer step fedavg with lr 1 so the
applied step is the aggregate itself: raw float32, a codec with error
feedback, and secure aggregation (where the coordinator cannot bound an
update, so this is the only bound there is).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from tests.helpers import secure
from tests.helpers.scripted import FAST, flat, scripted_steps

BOUND = 0.5


def _clipped(step: torch.Tensor, bound: float = BOUND) -> torch.Tensor:
    """The closed form step · min(1, B/‖step‖), in float64."""
    step = step.double()
    return step * min(1.0, bound / float(step.norm()))


def _plain(codec: str) -> CoordinatorConfig:
    return CoordinatorConfig(seed_from_first_client=True,
        listen="127.0.0.1:0", min_clients=1, inner_steps=1, chunk_bytes=1024,
        open_enrollment=True, outer_optimizer="fedavg", outer_lr=1.0,
        outer_momentum=0.0, codec=codec, max_update_norm_growth=0.0,
    )  # fmt: skip


def _bounded_run(codec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the client meant to push, the step the coordinator applied)."""
    torch.manual_seed(0)
    model = nn.Linear(30, 10)
    step = 0.3 * torch.randn(310, generator=torch.Generator().manual_seed(1))
    assert float(step.norm()) > 10 * BOUND
    config = dataclasses.replace(FAST, max_update_norm=BOUND)
    with (
        serve_in_thread(_plain(codec)) as coordinator,
        DiLoCoClient(
            coordinator.address, model, inner_steps=1, config=config
        ) as client,
    ):
        before = flat(model)
        (pushed,) = scripted_steps(client, model, [step])
        applied = before - flat(model)
    return pushed, applied


def test_a_raw_float32_update_is_clipped_to_the_bound_exactly() -> None:
    pushed, applied = _bounded_run("dense:fp32")
    torch.testing.assert_close(applied.double(), _clipped(pushed), rtol=0, atol=1e-6)
    assert float(applied.norm()) <= BOUND * (1 + 1e-6)


def test_an_int8_update_with_error_feedback_is_clipped_before_encoding() -> None:
    pushed, applied = _bounded_run("dense:int8")
    # int8 rounding moves each coordinate by at most half a step of its block.
    want = _clipped(pushed)
    step = float(want.abs().max()) / 127
    torch.testing.assert_close(applied.double(), want, rtol=0, atol=step)
    assert float(applied.norm()) <= BOUND * 1.02


def test_under_secure_aggregation_each_masked_update_is_clipped() -> None:
    config = dataclasses.replace(FAST, max_update_norm=BOUND)
    generator = torch.Generator().manual_seed(3)
    with serve_in_thread(secure.config()) as coordinator:
        clients = _connect_bounded(coordinator.address, config)
        try:
            before = flat(clients[0][1])
            size = before.numel()
            # Each coordinate under secagg_clip (0.5): only the norm bound clips.
            steps = [
                (0.4 * torch.randn(size, generator=generator)).clamp(-0.45, 0.45)
                for _ in clients
            ]
            pushed = _push_all(clients, steps)
            after = flat(clients[0][1])
        finally:
            secure.close_all(clients)
    applied = (before - after).double()
    want = torch.stack([_clipped(p) for p in pushed]).mean(dim=0)
    # int8 on secagg_clip's scale: 0.5/127 per coordinate at most, halved.
    torch.testing.assert_close(applied, want, rtol=0, atol=0.5 / 127)
    assert float(applied.norm()) <= BOUND * 1.05
    assert all(float(p.norm()) > 3 * BOUND for p in pushed)  # each one was clipped


def _connect_bounded(
    address: str, config: ClientConfig
) -> list[tuple[DiLoCoClient, nn.Module]]:
    def make(index: int) -> tuple[DiLoCoClient, nn.Module]:
        torch.manual_seed(index)
        model = nn.Linear(secure.IN, secure.OUT)
        return DiLoCoClient(address, model, config=config), model

    with ThreadPoolExecutor(3) as pool:
        return list(pool.map(make, range(3)))


def _push_all(
    clients: list[tuple[DiLoCoClient, nn.Module]], steps: list[torch.Tensor]
) -> list[torch.Tensor]:
    pushed = []
    for (_, model), step in zip(clients, steps, strict=True):
        before = flat(model)
        with torch.no_grad():
            offset = 0
            for param in model.parameters():
                n = param.numel()
                param.sub_(step[offset : offset + n].view(param.shape))
                offset += n
        pushed.append(before - flat(model))

    def sync(pair: tuple[DiLoCoClient, nn.Module]) -> str | None:
        assert pair[0].step(None)
        return pair[0].last_round_outcome

    with ThreadPoolExecutor(len(clients)) as pool:
        outcomes = list(pool.map(sync, clients))
    assert outcomes == ["applied"] * len(clients)
    return pushed
