"""What central client-level DP adds to a round's numerics, on the real code path.

For n dense updates of d float32 values staged in a `StagedSum` (the
default accumulator), committed and averaged by `WeightedMean`:

1. the plain round: stage, commit (fold into the sum), mean;
2. the same with `CentralGaussian`: every commit clips its update first
   (float64 norm by blocks, then a scale), and the mean gets N(0, (zS/n)²)
   per coordinate;

and the difference, per update (clip) and per round (noise). One torch
thread, median of `--repeats`. No gRPC: the wire's cost (~50-100 ms per
42 MB update on loopback, DESIGN.md) and the clients' training come on top,
so this is the stage's share of the coordinator's numeric work only.

Then the issue's figure, over real gRPC (`--round-params`, default 10.5M x
`--clients`): an in-process coordinator (`serve_in_thread`) with n
`DiLoCoClient` threads, dense fp32, H = 1 (every `step()` is a round, as
`bench/secagg.py` runs them), once with `privacy = "off"` and once with
`central` (weighting equal, S = 1, z = 1); the median round wall time of
each, and the noise stage's share of the private round, estimated as
(n x clip + noise, from the numeric part at the same d, same run) /
private round. Prints one JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fedgrpc.aggregate import StagedSum, WeightedMean
from fedgrpc.aggregate.buffers import BufferPool
from fedgrpc.privacy.central import CentralGaussian

CHUNK = (1 << 20) // 4


def log(msg: str) -> None:
    print(f"[central_dp] {msg}", file=sys.stderr, flush=True)


def one_round(
    updates: list[np.ndarray], pool: BufferPool, stage: CentralGaussian | None
) -> tuple[float, float]:
    """(seconds to stage, commit and average; seconds of the noise)."""
    d = updates[0].size
    clip = stage.clip_update if stage is not None else None
    acc = StagedSum(d, pool, budget_bytes=len(updates) * 4 * d, clip=clip)
    scratch = np.empty(CHUNK, np.float32)
    start = time.perf_counter()
    for key, values in enumerate(updates):
        for offset in range(0, d, CHUNK):
            acc.add_values(key, offset, values[offset : offset + CHUNK], 1.0, scratch)
        acc.commit_update(key, 1.0)
    out = acc.held().sum_tensor()
    WeightedMean().aggregate(acc.held(), out)
    summed = time.perf_counter() - start
    noise = 0.0
    if stage is not None:
        generator = torch.Generator()
        generator.manual_seed(0)
        start = time.perf_counter()
        stage.finish_aggregate(out, len(updates), generator)
        noise = time.perf_counter() - start
    acc.discard()
    return summed, noise


def median(fn: Callable[[], tuple[float, float]], repeats: int) -> tuple[float, float]:
    runs = [fn() for _ in range(repeats)]
    return (
        statistics.median(r[0] for r in runs),
        statistics.median(r[1] for r in runs),
    )


def measure(d: int, n: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    updates = [rng.standard_normal(d, dtype=np.float32) for _ in range(n)]
    pool = BufferPool(keep_bytes=(n + 2) * 4 * d)
    plain, _ = median(lambda: one_round(updates, pool, None), repeats)
    stage = CentralGaussian(1.0, 1.0)  # every update (norm ~sqrt(d)) is clipped
    private, noise = median(lambda: one_round(updates, pool, stage), repeats)
    clip_per_update = (private - plain) / n
    return {
        "d": d,
        "n": n,
        "plain_round_ms": round(plain * 1e3, 1),
        "clip_ms_per_update": round(clip_per_update * 1e3, 1),
        "noise_ms_per_round": round(noise * 1e3, 1),
        "dp_overhead_ratio": round((private + noise - plain) / plain, 3),
    }


def real_rounds(n: int, params: int, rounds: int, private: bool) -> float:
    """Median wall time of `rounds` plain rounds over gRPC (after a warm-up)."""
    from secagg import connect, one_round

    from fedgrpc.config import CoordinatorConfig
    from fedgrpc.coordinator.services.in_thread import serve_in_thread

    dp: dict[str, Any] = (
        {"privacy": "central", "weighting": "equal", "dp_clip_norm": 1.0,
         "dp_noise_multiplier": 1.0}
        if private else {}
    )  # fmt: skip
    config = CoordinatorConfig(seed_from_first_client=True,
        listen="127.0.0.1:0", open_enrollment=True, min_clients=n, max_clients=n,
        inner_steps=1, codec="dense:fp32", round_timeout_s=600.0,
        outer_optimizer="fedavg", max_update_norm_growth=0.0,
        session_timeout_s=600.0, **dp,
    )  # fmt: skip
    with serve_in_thread(config) as coordinator:
        clients = connect(coordinator.address, n, params)
        try:
            one_round(clients, seed=0)  # warm-up
            times = [one_round(clients, seed=1 + r) for r in range(rounds)]
        finally:
            for client, _ in clients:
                client.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10500000")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--round-params",
        type=int,
        default=10_500_000,
        help="model size of the real-gRPC rounds (0: skip them)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="d = 100k, 2 repeats (smoke)"
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats = "100000", 2
        args.round_params, args.rounds = 100_000, 2
    torch.set_num_threads(1)
    rows = []
    for d in (int(s) for s in args.sizes.split(",")):
        log(f"d={d} n={args.clients}")
        rows.append(measure(d, args.clients, args.repeats))
    report: dict[str, object] = {"bench": "central_dp", "threads": 1, "rows": rows}
    if args.round_params:
        d, n = args.round_params, args.clients
        stage_row = measure(d, n, args.repeats)
        log(f"real rounds: d={d} n={n}, privacy off then central")
        off = real_rounds(n, d, args.rounds, private=False)
        central = real_rounds(n, d, args.rounds, private=True)
        stage_s = (
            n * stage_row["clip_ms_per_update"] + stage_row["noise_ms_per_round"]
        ) / 1e3
        share = stage_s / central
        report["round"] = {
            "d": d, "n": n, "rounds": args.rounds,
            "off_round_s": round(off, 3), "central_round_s": round(central, 3),
            "round_overhead": round(central / off - 1, 3),
            "noise_stage_s": round(stage_s, 3),
            "noise_stage_share_of_round": round(share, 4),
            "goal_noise_stage_le_5pct": share <= 0.05,
        }  # fmt: skip
    print(json.dumps(report))


if __name__ == "__main__":
    main()
