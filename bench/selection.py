"""Client selection: 2 of 4 workers per round against all 4, at equal rounds (issue 12).

bench/convergence.py's in-process simulation (`_convergence_sim`, no gRPC):
W = 4 workers train `fedgrpc simulate`'s char-LM on dense fp32 updates,
R rounds of H inner AdamW steps, nesterov outer step (lr 0.7, momentum
0.7, the value convergence.py measured best on this model). Two cases per
seed, same initial weights and batches:

- `all`: every worker pushes every round (DiLoCo);
- `k2of4`: 2 of the 4 are chosen per round (`selection = "random"`,
  `clients_per_round = 2`); the others keep training and their next update
  spans the rounds they sat out (`_convergence_selection`).

Both do the same compute (every worker takes H steps per round); k2of4
sends half the updates and pulls. Reported: final validation loss (mean,
std over seeds) and bytes moved, so the trade is visible.

`--cache DIR` keeps each run's result and resumes (runs take ~10 min on a
quiet core). One JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

from _convergence_pool import run_cases
from _convergence_sim import Case
from _util import log, rounded

CASES = {"all": 0, "k2of4": 2}
"""Case name -> clients_per_round (0: every worker)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--rounds", type=int, default=40, help="outer rounds (default 40)")
    add("--inner-steps", type=int, default=50, help="H, inner steps per round")
    add("--seeds", type=int, default=2, help="seeds per case (default 2)")
    add("--eval-batches", type=int, default=100, help="final eval, 32 windows each")
    add("--jobs", type=int, default=1, help="processes running runs side by side")
    add("--timeout", type=float, default=6 * 3600.0, help="seconds for all runs")
    add("--cache", type=Path, help="keep each run's result here; reuse on rerun")
    add("--quick", action="store_true", help="2 rounds, H=5, 1 seed: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.inner_steps, args.eval_batches, args.seeds = 2, 5, 4, 1
    if min(args.rounds, args.inner_steps, args.seeds, args.jobs) < 1:
        parser.error("--rounds, --inner-steps, --seeds, --jobs must be >= 1")
    return args


def make_case(args: argparse.Namespace, name: str, seed: int) -> Case:
    return Case(
        name=name,
        kind="diloco",
        outer="nesterov",
        outer_lr=0.7,
        outer_momentum=0.7,
        rounds=args.rounds,
        inner_steps=args.inner_steps,
        seed=seed,
        eval_batches=args.eval_batches,
        curve_batches=max(1, args.eval_batches // 5),
        clients_per_round=CASES[name],
    )


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    losses = [
        math.nan if r is None or r["final_val_loss"] is None
        else float(r["final_val_loss"])
        for r in results
    ]  # fmt: skip
    finite = [v for v in losses if math.isfinite(v)]
    return {
        "final_val_loss": {
            "mean": statistics.fmean(finite) if finite else math.nan,
            "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
            "per_seed": losses,
        },
        "bytes_up": [r["bytes_up"] for r in results if r is not None],
        "bytes_down": [r["bytes_down"] for r in results if r is not None],
    }


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    # Seed-major, so a run stopped early (resumed with --cache) already has
    # both cases of seed 0 to compare.
    cases = [make_case(args, n, s) for s in range(args.seeds) for n in CASES]
    log("selection", f"{len(cases)} runs: {list(CASES)} x {args.seeds} seeds")
    results = run_cases(cases, args.jobs, args.timeout, args.cache)
    by_name = {
        n: _summary([r for c, r in zip(cases, results, strict=True) if c.name == n])
        for n in CASES
    }
    report = {
        "bench": "selection",
        "workers": 4,
        "rounds": args.rounds,
        "h": args.inner_steps,
        "seeds": args.seeds,
        "codec": "dense:fp32",
        "quick": args.quick,
        "cases": by_name,
        "wall_seconds": time.perf_counter() - started,
        "machine": {"cpus": os.cpu_count(), "jobs": args.jobs},
    }
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
