"""Accumulators and aggregators on one machine: ingest rate, aggregate time, memory.

For n updates of d float32 values, streamed in 1 MiB chunks:

1. ingest into the streaming sum (today's path) and into the disk spool
   (one fallocate'd memmap file per update), MB/s of update bytes;
2. aggregate: the weighted mean over the sum (in place), and the weighted
   mean, coordinate-wise median and trimmed mean over the spool;
3. the heap each phase allocated at its peak (tracemalloc sees numpy's
   buffers), against the n x d x 4 bytes a naive rule would hold: the spool
   rules should stay O(n x block), not O(n x d).

Prints one JSON object on stdout; progress goes to stderr. MB is 10^6 bytes.
Pure in-process numerics: no gRPC, no signing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedgrpc.aggregate import (
    CoordinateMedian,
    SpoolDirectory,
    StreamingSum,
    TrimmedMean,
    WeightedMean,
)

MB = 1e6
CHUNK = (1 << 20) // 4  # coordinates per 1 MiB chunk


def log(msg: str) -> None:
    print(f"[aggregation] {msg}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, int]:
    """(seconds, peak heap bytes allocated while `fn` ran)."""
    tracemalloc.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak


def ingest(acc: Any, updates: np.ndarray) -> None:
    scratch = np.empty(CHUNK, np.float32)
    for key, update in enumerate(updates):
        weight = 1.0 + key
        for start in range(0, update.size, CHUNK):
            acc.add_values(key, start, update[start : start + CHUNK], weight, scratch)
        acc.commit_update(key, weight)


def run(n: int, d: int, spool_root: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    updates = rng.standard_normal((n, d), dtype=np.float32)
    update_mb = n * d * 4 / MB
    report: dict[str, Any] = {"n": n, "d": d, "update_mb": round(update_mb, 1)}

    total = StreamingSum(torch.zeros(d))
    s, peak = timed(lambda: ingest(total, updates))
    report["sum_ingest_mb_s"] = round(update_mb / s, 1)
    report["sum_ingest_peak_heap_mb"] = round(peak / MB, 2)
    buffer = total.sum_tensor()
    s, peak = timed(lambda: WeightedMean().aggregate(total.held(), buffer))
    report["sum_mean_s"] = round(s, 4)
    report["sum_mean_peak_heap_mb"] = round(peak / MB, 2)
    log(f"streaming sum done: {report}")

    with SpoolDirectory(spool_root) as directory:
        spool = directory.open_round(1, d, n)
        s, peak = timed(lambda: ingest(spool, updates))
        report["spool_ingest_mb_s"] = round(update_mb / s, 1)
        report["spool_ingest_peak_heap_mb"] = round(peak / MB, 2)
        out = torch.empty(d)
        rules: dict[str, Any] = {
            "spool_mean": WeightedMean(),
            "spool_median": CoordinateMedian(),
            "spool_trimmed_mean_0.25": TrimmedMean(0.25),
        }
        for label, rule in rules.items():
            s, peak = timed(partial(rule.aggregate, spool.held(), out))
            report[f"{label}_s"] = round(s, 3)
            report[f"{label}_mb_s"] = round(update_mb / s, 1)
            report[f"{label}_peak_heap_mb"] = round(peak / MB, 2)
            log(f"{label}: {s:.3f} s")
        check = np.median(updates[:, :4096], axis=0)
        CoordinateMedian().aggregate(spool.held(), out)
        report["median_matches_numpy"] = bool(np.array_equal(out.numpy()[:4096], check))
        spool.discard()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--coordinates", type=int, default=4_000_000)
    parser.add_argument("--spool-dir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # DESIGN.md: torch on 2 busy threads ran 14-22x slower
    with tempfile.TemporaryDirectory() as tmp:
        root = args.spool_dir or Path(tmp) / "spool"
        report = run(args.clients, args.coordinates, root)
    report["naive_n_x_d_mb"] = report["update_mb"]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
