r"""A torchrun data-parallel worker that joins the federation as ONE client.

Run a coordinator, a plain client, and a 2-process worker beside it:

    .venv/bin/fedgrpc serve --listen 127.0.0.1:7070 --min-clients 2 --inner-steps 20 \\
        --seed-from-first-client
    .venv/bin/python client/torch_loop.py --target 127.0.0.1:7070 --steps 100 &
    .venv/bin/torchrun --standalone --nproc-per-node 2 client/torchrun_worker.py \\
        --target 127.0.0.1:7070 --rounds 5

Inside the worker the ranks train one DDP replica (gloo, CPU) on their own
data shards, so they stay identical step by step. `DistributedDiLoCoClient`
makes rank 0 the only rank that talks to the coordinator: it pushes the
worker's pseudo-gradient (with the samples and loss of both ranks), and the
new global weights are broadcast to the other rank. The model is the same
nn.Linear(8, 1) as client/torch_loop.py, so the two can share a federation.

With --report-file PATH every rank appends one JSON line per round to
PATH.rank<r> (round, version, outcome, a SHA-256 of its parameters): equal
digests across ranks show the replicas agree after every sync.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import fedgrpc

ROUND_WAIT_S = 600.0
"""Longest rank 0 waits for a round to open or close (`ClientConfig.round_wait_s`)."""
GROUP_TIMEOUT = datetime.timedelta(seconds=ROUND_WAIT_S + 120)
"""The other ranks wait in a broadcast meanwhile, so the gloo timeout is longer."""


def parse_args() -> argparse.Namespace:
    """Flags; torchrun adds the rank and rendezvous through the environment."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="coordinator host:port")
    parser.add_argument(
        "--rounds", type=int, default=5, help="outer rounds to train (default: 5)"
    )
    parser.add_argument(
        "--inner-steps",
        type=int,
        default=None,
        metavar="H",
        help="inner steps per round; must match the coordinator's "
        "(default: follow the coordinator)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for the data shards (default: 0)"
    )
    parser.add_argument(
        "--proximal-mu",
        type=float,
        default=0.0,
        help="FedProx strength mu on every rank: + mu/2 ||w - w_global||^2 "
        "(default: 0, off)",
    )
    parser.add_argument(
        "--identity-key",
        default="",
        help="rank 0's private key (PEM); default a throwaway key",
    )
    parser.add_argument(
        "--report-file",
        type=Path,
        metavar="PATH",
        help="append one JSON line per round to PATH.rank<r> (default: none)",
    )
    return parser.parse_args()


def digest(model: torch.nn.Module) -> str:
    """SHA-256 of the parameters' bytes: equal iff the replicas are identical."""
    sha = hashlib.sha256()
    for name, param in model.named_parameters():
        sha.update(name.encode())
        sha.update(param.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def report(
    path: Path | None, model: torch.nn.Linear, line: Mapping[str, object]
) -> None:
    """Append this rank's state after a sync (or the join) to PATH.rank<r>."""
    if path is None:
        return
    rank = dist.get_rank()
    line = {
        **line,
        "rank": rank,
        "digest": digest(model),
        "weights": model.weight.detach().flatten().tolist(),
    }
    with Path(f"{path}.rank{rank}").open("a") as out:
        out.write(json.dumps(line) + "\n")


def train(args: argparse.Namespace) -> None:
    """Train --rounds rounds of DDP on this rank's shard, federated as one client."""
    rank = dist.get_rank()
    torch.manual_seed(args.seed)  # same init everywhere (DDP broadcasts it anyway)
    true_weights = torch.arange(8, dtype=torch.float32)  # as in torch_loop.py
    shard = torch.Generator().manual_seed(1000 * (args.seed + 1) + rank)
    inputs = torch.randn(512, 8, generator=shard)  # this rank's private data
    targets = inputs @ true_weights + 0.01 * torch.randn(512, generator=shard)

    model = torch.nn.Linear(8, 1)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=0.05)
    config = fedgrpc.ClientConfig(
        name=f"torchrun-{args.seed}",
        round_wait_s=ROUND_WAIT_S,
        proximal_mu=args.proximal_mu,
        identity_key=args.identity_key,
    )
    # Every rank constructs it; only rank 0 joins. DDP is unwrapped, so
    # parameter names match plain clients ("weight", not "module.weight").
    with fedgrpc.DistributedDiLoCoClient(
        args.target, ddp, inner_steps=args.inner_steps, config=config
    ) as client:
        report(args.report_file, model, {"round": 0, "version": client.model_version})
        for _ in range(args.rounds * client.inner_steps):
            batch = torch.randint(0, len(inputs), (32,), generator=shard)
            loss = torch.nn.functional.mse_loss(
                ddp(inputs[batch]).squeeze(-1), targets[batch]
            )
            optimizer.zero_grad()
            loss.backward()  # DDP all-reduces the gradients
            optimizer.step()
            # Every H steps (on all ranks at once): rank 0 pushes, the new
            # global weights are broadcast to every rank.
            if client.step(loss=loss, num_samples=len(batch)):
                line = {
                    "round": client.rounds_completed,
                    "version": client.model_version,
                    "outcome": client.last_round_outcome,
                    "client_id": client.client_id,
                    "loss": loss.item(),
                }
                report(args.report_file, model, line)
                if rank == 0:
                    print(json.dumps(line), flush=True)


def main() -> None:
    """Join the torchrun group, train, and leave it cleanly."""
    args = parse_args()
    dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)
    try:
        train(args)
    finally:
        # DDP holds the gloo group; destroying the group while a DDP is still
        # alive aborts the process at exit in ~20 % of runs (torch 2.13,
        # "terminate called without an active exception"). train() has
        # returned, so its DDP is gone unless a cycle keeps it: collect first.
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
