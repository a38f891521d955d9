"""`fedgrpc serve --aggregator krum` (and the other robust rules) ignore a huge update.

A real `fedgrpc serve` process, four real DiLoCoClients pushing similar
pseudo-gradients the test chooses, and one hostile participant (raw stubs,
`tests.helpers.raw`) that joined like anyone under open enrollment and
pushes a validly signed update 10⁴ times longer than the honest ones. With
the mean it would drag the model ~2000 away; every robust rule must keep
the applied step inside the honest updates' cloud. The outer step is fedavg
with lr 1, so the applied step is the aggregate itself.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.wire.tensors import spec_from_module
from tests.conftest import Spawn
from tests.helpers.raw import admin_status, join, stub, update_messages
from tests.helpers.scripted import FAST, flat
from tests.helpers.serve import start_serve

HONEST = 4
IN, OUT = 12, 5


def _honest_steps(size: int) -> list[torch.Tensor]:
    """Similar updates: a shared direction plus 5 % noise each."""
    generator = torch.Generator().manual_seed(11)
    shared = 0.1 * torch.randn(size, generator=generator)
    return [
        shared + 0.005 * torch.randn(size, generator=generator) for _ in range(HONEST)
    ]


def _move(model: nn.Module, step: torch.Tensor) -> torch.Tensor:
    """Subtract `step` from the weights; the pseudo-gradient the client will push."""
    before = flat(model)
    with torch.no_grad():
        offset = 0
        for param in model.parameters():
            n = param.numel()
            param.sub_(step[offset : offset + n].view(param.shape))
            offset += n
    return before - flat(model)


@pytest.mark.parametrize(
    "flags",
    [
        ["--aggregator", "krum"],
        ["--aggregator", "multi_krum", "--krum-f", "1"],
        ["--aggregator", "geometric_median"],
        ["--aggregator", "centered_clipping", "--clipping-iters", "3"],
        ["--aggregator", "hybrid", "--trimmed-mean-beta", "0.2"],
    ],
    ids=["krum", "multi_krum", "geometric_median", "centered_clipping", "hybrid"],
)  # fmt: skip
def test_robust_rule_ignores_a_validly_signed_huge_update(
    flags: list[str], spawn: Spawn, tmp_path: Path
) -> None:
    # Arrange: serve with the rule; four honest clients join (the first seeds).
    process, address = start_serve(
        spawn, tmp_path / "serve.log", "--open-enrollment",
        "--min-clients", str(HONEST + 1), "--inner-steps", "1",
        "--outer-optimizer", "fedavg", "--outer-lr", "1.0",
        "--max-update-norm-growth", "0", "--round-timeout-s", "60",
        "--spool-dir", str(tmp_path / "spool"), *flags,
    )  # fmt: skip
    (tmp_path / "spool").mkdir(exist_ok=True)
    models = []
    for index in range(HONEST):
        torch.manual_seed(index)
        models.append(nn.Linear(IN, OUT))
    clients = [DiLoCoClient(address, models[0], config=FAST)]
    clients += [DiLoCoClient(address, m, config=FAST) for m in models[1:]]
    channel, service = stub(address)
    try:
        start = flat(models[0])
        size = start.numel()
        # Act: the attacker pushes first, then the honest clients sync at once.
        attacker = join(service, spec_from_module(models[0]), "attacker")
        status = admin_status(attacker)
        huge = np.full(size, 1e3, dtype=np.float32)  # norm ~8000 vs ~0.8
        service.PushUpdate(
            update_messages(
                attacker, huge, round_id=status.round_id,
                base_version=status.model_version, chunk_coords=16,
            ),
            timeout=10,
        )  # fmt: skip
        pushed = [_move(m, s) for m, s in zip(models, _honest_steps(size), strict=True)]
        with ThreadPoolExecutor(HONEST) as pool:
            synced = list(pool.map(lambda c: c.step(None), clients))
        outcomes = [c.last_round_outcome for c in clients]
        applied = (start - flat(models[0])).double()
    finally:
        channel.close()
        for client in clients:
            client.close()

    # Assert: the round applied all five updates' worth, and the step sits
    # among the honest ones, nowhere near where the mean would have gone.
    assert synced == [True] * HONEST
    assert outcomes == ["applied"] * HONEST, outcomes
    honest = torch.stack([p.double() for p in pushed])
    centre = honest.mean(dim=0)
    spread = float((honest - centre).norm(dim=1).max())
    mean_with_attacker = (honest.sum(dim=0) + torch.from_numpy(huge).double()) / 5
    assert float((mean_with_attacker - centre).norm()) > 1000.0
    assert float((applied - centre).norm()) <= 1.5 * spread + 1e-5, flags
    assert process.poll() is None
