"""FedProx in a DistributedDiLoCoClient: every rank's replica gets the term.

Two rank processes (gloo over a FileStore, DDP) run this file as a script
against an in-process coordinator whose rounds the worker applies alone.
Each rank checks every inner step against the closed form
w' = w - lr * (grad + mu * (w - w_global)), where grad is DDP's averaged
gradient and w_global the weights the rank last received (rank 0 from the
coordinator, rank 1 from rank 0's broadcast).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fedgrpc import DistributedDiLoCoClient
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread

if TYPE_CHECKING:  # the rank processes run this file without `tests` importable
    from tests.conftest import Spawn

H, ROUNDS, MU, LR = 3, 2, 0.5, 0.1
WAIT_S = 60.0
"""Bound on every wait, in the test and in the rank processes."""


def test_every_rank_of_a_distributed_client_gets_the_proximal_term(
    spawn: Spawn, tmp_path: Path
) -> None:
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=1,
        inner_steps=H,
        round_timeout_s=30.0,
    )
    with serve_in_thread(config) as coordinator:
        ranks = [_start_rank(spawn, tmp_path, r, coordinator.address) for r in (0, 1)]
        codes = [process.wait(timeout=WAIT_S * 2) for process in ranks]
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("rank*.log")))
    assert codes == [0, 0], logs
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    for result in results:
        assert result["outcomes"] == ["applied"] * ROUNDS
        assert result["worst_error"] < 1e-6
        assert result["largest_term"] > 1e-3  # the term was there to check
    assert results[0]["digest"] == results[1]["digest"]


def _start_rank(
    spawn: Spawn, tmp_path: Path, rank: int, address: str
) -> subprocess.Popen[Any]:
    argv = [sys.executable, __file__, "--rank", str(rank), "--dir", str(tmp_path)]
    with (tmp_path / f"rank{rank}.log").open("w") as log:  # the child keeps a copy
        return spawn([*argv, "--target", address], stderr=log, stdout=log)


# -- the rank process ----------------------------------------------------------


def _flat(tensors: Any) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _rank_main(rank: int, folder: Path, target: str) -> None:
    torch.manual_seed(rank)  # different data per rank; DDP equalises the init
    ddp = DistributedDataParallel(torch.nn.Linear(4, 2))
    params = list(ddp.parameters())
    optimizer = torch.optim.SGD(params, lr=LR)
    config = ClientConfig(rpc_timeout_s=10, round_wait_s=30, proximal_mu=MU)
    out: dict[str, Any] = {"outcomes": [], "worst_error": 0.0, "largest_term": 0.0}
    with DistributedDiLoCoClient(target, ddp, inner_steps=H, config=config) as client:
        anchor = _flat(params).clone()  # the weights every rank joined with
        for _ in range(ROUNDS * H):
            inputs = torch.randn(8, 4) + rank  # heterogeneous shards
            loss = (ddp(inputs) - inputs[:, :2]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()  # DDP averages the gradients over the ranks
            w, grad = _flat(params).clone(), _flat(p.grad for p in params)
            optimizer.step()
            term = MU * (w - anchor)
            error = (_flat(params) - (w - LR * (grad + term))).abs().max().item()
            out["worst_error"] = max(out["worst_error"], error)
            out["largest_term"] = max(out["largest_term"], term.abs().max().item())
            if client.step(loss, num_samples=8):
                out["outcomes"].append(client.last_round_outcome)
                anchor = _flat(params).clone()  # the new global weights
        out["digest"] = _flat(params).numpy().tobytes().hex()
    (folder / f"rank{rank}.json").write_text(json.dumps(out))
    del ddp


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--target")
    args = parser.parse_args()
    dist.init_process_group(
        "gloo",
        init_method=f"file://{args.dir / 'store'}",
        rank=args.rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=WAIT_S),
    )
    try:
        _rank_main(args.rank, args.dir, args.target)
    finally:
        gc.collect()  # DDP must be gone before its group (see torchrun_worker.py)
        dist.destroy_process_group()
