"""Secure aggregation over parameter shards (issue 19): 1 shard against 2.

Every shard is a `fedgrpc serve --shard I/N --secure-aggregation` process
(dense:int8, `bench/shard_layouts.py`), every client its own process (H = 1,
noise updates, `bench/shards.py`'s client). Each shard runs its own masked
round over its own range, so per shard: coordinator CPU seconds per round
(key relay, ring sum and unmasking of its range only), median round time
(setup, key exchange, masked pushes and unmasking included) and inbound
bytes per round (ring elements of its range). Prints JSON; progress to
stderr. No goal is set by the issue for this; the figures say what a
masked round over shards costs next to one secure coordinator.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from _util import log, parse_size, rounded
from shard_layouts import Harness, measure_shards
from shards import client_main, coordinator_view, cpu_seconds, write_init_model

CLIENTS = 4
SECURE_FLAGS = ("--inner-steps", "1", "--log-format", "json", "--log-level",
                "WARNING", "--open-enrollment", "--max-update-norm-growth", "0",
                "--secure-aggregation", "--codec", "dense:int8",
                "--secagg-clip", "0.01", "--chunk-bytes", "262144")  # fmt: skip
"""The clients' noise updates are 1e-3 x N(0, 1): a 0.01 clip keeps them
unclipped. No divergence guard: the updates are noise. 256 KiB chunks: int8
blocks of ~261k values, so 1M parameters split into two whole-block ranges
(at the default 1 MiB a block holds ~1.04M values)."""
HARNESS = Harness(
    SECURE_FLAGS, client_main, cpu_seconds, coordinator_view, write_init_model
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="1M", help="model parameters")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per layout, the first a warm-up")  # fmt: skip
    parser.add_argument("--shards", default="1,2",
                        help="shard counts, the first the baseline")  # fmt: skip
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def main() -> None:
    args = parse_args()
    params = parse_size(args.params)
    runs = []
    for count in [int(n) for n in args.shards.split(",") if n.strip()]:
        with tempfile.TemporaryDirectory(prefix="fedgrpc-secure-shards-") as tmp:
            log("secure_shards", f"{count} shard(s), {CLIENTS} clients, {params}")
            run = measure_shards(HARNESS, count, params, args.rounds, CLIENTS,
                                 Path(tmp))  # fmt: skip
            for shard in run["per_shard"]:  # fp32 block cuts: not int8's
                for key in ("range_mb", "rss_over_range"):
                    shard.pop(key, None)
            runs.append(run)
    one = runs[0]["per_shard"][0]
    report: dict[str, Any] = {
        "bench": "secure_shards",
        "params": params,
        "clients": CLIENTS,
        "rounds": args.rounds,
        "codec": "dense:int8 (masked)",
        "runs": runs,
        "vs_one_shard": {
            str(run["shards"]): {
                "worst_cpu_ratio": max(s["cpu_s_per_round"] for s in run["per_shard"])
                / one["cpu_s_per_round"],
                "worst_round_s_ratio": max(
                    s["round_s_median"] for s in run["per_shard"]
                )
                / one["round_s_median"],
            }
            for run in runs[1:]
        },
        "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
    }
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
