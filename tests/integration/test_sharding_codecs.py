"""Lossy codecs over parameter shards: the same federation as one coordinator.

Three scripted clients, three rounds, against one coordinator and against
two shards, with a lossy codec and error feedback (`dense:int8`,
`topk:0.1:int8`). Rounding is stochastic and unseeded, so the two runs
send different codes and are not bit-equal. What must hold exactly is the
codecs' own invariant (`client.compressed`): per client, the sum of the
applied updates plus the residual e is the sum of its pseudo-gradients.
With fedavg at lr 1 and every round applied,

    w_R = w_0 - mean_i(Σ_r Δ_i,r) + mean_i(e_i,R),

and the scripted Δ are the same in both runs, so w_R - mean_i(e_i,R) must
agree to float32 rounding (atol 1e-5 over 3 rounds of ~0.05 steps): a range
decoded at the wrong offset, a block cut differently, or an update applied
on one shard only would break it by far more. The raw weights still differ
by the codecs' rounding, which the test also bounds and reports in its name.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.client.compressed import CompressedUpdates
from fedgrpc.client.sharded import ShardedSync
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from tests.helpers.scripted import FAST
from tests.helpers.shards import assembled, running_shards, shard_configs
from tests.helpers.tree import Member, base_config, close_all, master_of, run_round

IN, OUT = 80, 60
SIZE = IN * OUT + OUT
"""4,860 parameters: two blocks or more per shard for both codecs (int8
blocks of 1,020 values, top-k blocks of 2,048 at chunk_bytes 1024)."""
ROUNDS, CLIENTS = 3, 3
FEDAVG: dict[str, Any] = {
    "outer_optimizer": "fedavg",
    "outer_lr": 1.0,
    "outer_momentum": 0.0,
    "min_clients": CLIENTS,
}


def init_model(tmp_path: Path) -> Path:
    torch.manual_seed(7)
    path = tmp_path / "codec-init.safetensors"
    model = nn.Linear(IN, OUT)
    save_file({n: p.detach() for n, p in model.named_parameters()}, str(path))
    return path


def join(address: str) -> list[Member]:
    def make(index: int) -> Member:
        model = nn.Linear(IN, OUT)
        return DiLoCoClient(address, model, config=FAST), model, 1

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(make, range(CLIENTS)))


def scripted(seed: int) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        [0.05 * torch.randn(SIZE, generator=generator) for _ in range(ROUNDS)]
        for _ in range(CLIENTS)
    ]


def residual_of(client: DiLoCoClient) -> torch.Tensor:
    """The client's e over the whole model (its ranges' residuals, in order)."""
    sync = client._sync  # the client's own state
    encoders = sync.encoders if isinstance(sync, ShardedSync) else [sync.compressed]
    parts = []
    for encoder in encoders:
        assert isinstance(encoder, CompressedUpdates)
        parts.append(torch.from_numpy(encoder.feedback.residual.copy()))
    return torch.cat(parts)


def run(members: list[Member], steps: list[list[torch.Tensor]]) -> torch.Tensor:
    """Every round applied; the mean residual e after the last."""
    for r in range(ROUNDS):
        outcomes = run_round(members, [s[r] for s in steps])
        assert outcomes == ["applied"] * CLIENTS, (r, outcomes)
    return torch.stack([residual_of(c) for c, _, _ in members]).mean(dim=0)


@pytest.mark.parametrize("codec", ["dense:int8", "topk:0.1:int8"])
def test_a_lossy_codec_over_two_shards_keeps_the_error_feedback_books_of_one(
    tmp_path: Path, codec: str
) -> None:
    # Arrange: one coordinator, then two shards, same init and scripted steps.
    init, steps = init_model(tmp_path), scripted(seed=8)
    with serve_in_thread(
        base_config(init_model=str(init), codec=codec, **FEDAVG)
    ) as flat:
        members = join(flat.address)
        try:
            initial = master_of(flat)
            flat_e = run(members, steps)
            flat_w = master_of(flat)
        finally:
            close_all(members)
    configs = shard_configs(tmp_path, 2, init_model=str(init), codec=codec,
                            **FEDAVG)  # fmt: skip

    # Act
    with running_shards(configs) as shards:
        members = join(shards[0].address)
        try:
            shard_e = run(members, steps)
            shard_w = assembled(shards)
            pulled = [torch.cat([p.detach().flatten() for p in m.parameters()])
                      for _, m, _ in members]  # fmt: skip
        finally:
            close_all(members)

    # Assert: the books agree exactly (to float32), the codec was lossy
    # (e is not zero), the weights moved, and the clients hold the shards'.
    torch.testing.assert_close(shard_w - shard_e, flat_w - flat_e, rtol=0, atol=1e-5)
    assert float(shard_e.abs().max()) > 1e-4
    assert float((shard_w - initial).abs().max()) > 0.05
    for weights in pulled:
        assert torch.equal(weights, shard_w)
    # The raw weights differ only by the residuals' difference.
    gap = float((shard_w - flat_w).abs().max())
    assert gap <= float((shard_e - flat_e).abs().max()) + 1e-5
