"""What central client-level DP adds to a round's numerics, on the real code path.

For n dense updates of d float32 values staged in a `StagedSum` (the
default accumulator), committed and averaged by `WeightedMean`:

1. the plain round: stage, commit (fold into the sum), mean;
2. the same with `CentralGaussian`: every commit clips its update first
   (float64 norm by blocks, then a scale), and the mean gets N(0, (zS/n)²)
   per coordinate;

and the difference, per update (clip) and per round (noise). One torch
thread, median of `--repeats`. Prints one JSON object on stdout; progress on
stderr. No gRPC: the wire's cost (~50-100 ms per 42 MB update on loopback,
DESIGN.md) and the clients' training come on top, so this is the stage's
share of the coordinator's numeric work only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10500000")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--quick", action="store_true", help="d = 100k, 2 repeats (smoke)"
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats = "100000", 2
    torch.set_num_threads(1)
    rows = []
    for d in (int(s) for s in args.sizes.split(",")):
        log(f"d={d} n={args.clients}")
        rows.append(measure(d, args.clients, args.repeats))
    print(json.dumps({"bench": "central_dp", "threads": 1, "rows": rows}))


if __name__ == "__main__":
    main()
