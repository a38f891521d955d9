"""Validation loss of every outer optimizer against data parallel (issue 12).

bench/convergence.py's in-process simulation (`_convergence_sim`, no gRPC):
W = 4 workers train `fedgrpc simulate`'s char-LM (~136k parameters, byte
tokens from the standard library's sources), dense fp32 updates, R = 40
rounds of H = 50 inner AdamW steps; every run sees the same initial
weights and batches for a given seed and is scored by the validation loss
of the global weights. The only thing that changes is the outer step:

- nesterov (DiLoCo; momentum 0.7, the value convergence.py measured best
  on this model), fedavg, fedavgm (heavy-ball, momentum 0.9);
- fedadagrad, fedadam, fedyogi (Reddi et al. 2021, Algorithm 2; β1 0.9,
  β2 0.99, τ 1e-3: the paper's values).

sparseloco is not run: on dense fp32 nothing is left in the clients'
residual, so its outer step is fedavg at lr 1, which the fedavg sweep has.

Tuning: each optimizer runs its learning-rate grid (`SWEEP`, the library
default first) on seed 0; the best lr then runs seeds 1 .. --seeds-1 too,
and data parallel runs every seed. Gaps are percent of data parallel's
loss, paired by seed. `--cache DIR` keeps every run's result and resumes
(the runs are long: ~4 min each on a quiet core); `--only-cached` reports
what DIR holds without running anything (missing runs are listed).

One JSON object on stdout; progress on stderr.
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

from _convergence_pool import cached_result, run_cases
from _convergence_sim import Case
from _util import log, rounded

SWEEP: dict[str, tuple[float, tuple[float, ...]]] = {
    # optimizer: (momentum, learning rates with the library default first)
    "nesterov": (0.7, (0.7, 0.5, 1.0)),
    "fedavg": (0.0, (1.0, 0.7, 1.4)),
    "fedavgm": (0.9, (0.7, 0.35, 0.2)),
    "fedadagrad": (0.0, (0.1, 0.03, 0.3)),
    "fedadam": (0.0, (0.01, 0.003, 0.03)),
    "fedyogi": (0.0, (0.01, 0.003, 0.03)),
}
ADAPTIVE = ("fedadagrad", "fedadam", "fedyogi")
BETA1, BETA2, TAU = 0.9, 0.99, 1e-3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--rounds", type=int, default=40, help="outer rounds (default 40)")
    add("--inner-steps", type=int, default=50, help="H, inner steps per round")
    add("--seeds", type=int, default=2, help="seeds of the tuned lr and of dp (>= 2)")
    add("--optimizers", default=",".join(SWEEP), help="comma list of names")
    add("--lrs", type=int, default=3, help="first N lrs of each grid (default all)")
    add("--eval-batches", type=int, default=100, help="final eval, 32 windows each")
    add("--jobs", type=int, default=1, help="processes running runs side by side")
    add("--timeout", type=float, default=6 * 3600.0, help="seconds per phase")
    add("--cache", type=Path, help="keep each run's result here; reuse on rerun")
    add("--only-cached", action="store_true", help="report --cache, run nothing")
    add("--quick", action="store_true", help="2 rounds, H=5, default lrs only")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.inner_steps, args.eval_batches, args.lrs = 2, 5, 4, 1
    args.optimizers = args.optimizers.split(",")
    unknown = sorted(set(args.optimizers) - set(SWEEP))
    if unknown:
        parser.error(f"unknown optimizers {unknown}; expected some of {list(SWEEP)}")
    if min(args.rounds, args.inner_steps, args.seeds, args.lrs, args.jobs) < 1:
        parser.error("--rounds, --inner-steps, --seeds, --lrs, --jobs must be >= 1")
    if args.only_cached and args.cache is None:
        parser.error("--only-cached needs --cache")
    return args


def make_case(args: argparse.Namespace, optimizer: str, lr: float, seed: int) -> Case:
    """One run: `optimizer` at `lr`, or data parallel if `optimizer` is 'dp'."""
    common: dict[str, Any] = {
        "rounds": args.rounds,
        "inner_steps": args.inner_steps,
        "seed": seed,
        "eval_batches": args.eval_batches,
        "curve_batches": max(1, args.eval_batches // 5),
    }
    if optimizer == "dp":
        return Case(name="dp", kind="dp", **common)
    momentum = SWEEP[optimizer][0]
    return Case(
        name=f"{optimizer}-lr{lr:g}",
        kind="diloco",
        outer=optimizer,
        outer_lr=lr,
        outer_momentum=momentum,
        outer_beta1=BETA1,
        outer_beta2=BETA2,
        outer_tau=TAU,
        **common,
    )


def _loss(result: dict[str, Any] | None) -> float:
    """A run's final loss; NaN if it diverged, is missing, or did not finish."""
    if result is None or result["final_val_loss"] is None:
        return math.nan
    return float(result["final_val_loss"])


def _mean_std(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if math.isfinite(v)]
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    mean = statistics.fmean(finite) if finite else math.nan
    return {"mean": mean, "std": std, "per_seed": values, "seeds": len(finite)}


class Runner:
    """Runs (or, with --only-cached, looks up) cases; remembers what is missing."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.missing: list[str] = []

    def results(self, cases: list[Case]) -> list[dict[str, Any] | None]:
        """One result (None if missing) per case, in order."""
        if not self.args.only_cached:
            runs = run_cases(cases, self.args.jobs, self.args.timeout, self.args.cache)
            return list(runs)
        found = [cached_result(self.args.cache, case) for case in cases]
        for case, result in zip(cases, found, strict=True):
            if result is None:
                self.missing.append(f"{case.name} seed {case.seed}")
        return found


def sweep(runner: Runner, args: argparse.Namespace) -> dict[str, dict[float, Any]]:
    """Phase 1: every lr of every grid on seed 0, plus data parallel on seed 0.

    Run order: each optimizer's default lr (in --optimizers order), then
    data parallel, then the other lrs, so a run cut short by time still has
    one figure per optimizer.
    """
    grid = [(name, lr) for name in args.optimizers for lr in SWEEP[name][1][: args.lrs]]
    grid.sort(key=lambda item: SWEEP[item[0]][1].index(item[1]) > 0)  # stable
    defaults = sum(1 for name, lr in grid if lr == SWEEP[name][1][0])
    order = [*grid[:defaults], ("dp", 0.0), *grid[defaults:]]
    found = runner.results([make_case(args, name, lr, 0) for name, lr in order])
    out: dict[str, dict[float, Any]] = {}
    for (name, lr), result in zip(order, found, strict=True):
        out.setdefault(name, {})[lr] = result
    return out


def tuned_lr(seed0: dict[float, Any]) -> float:
    """The lr with the lowest seed-0 loss (diverged or missing runs lose)."""
    losses = {lr: _loss(r) for lr, r in seed0.items()}
    return min(losses, key=lambda lr: losses[lr] if math.isfinite(losses[lr]) else 1e9)


def summarise(
    args: argparse.Namespace,
    seed0: dict[str, dict[float, Any]],
    seeds: dict[str, list[dict[str, Any] | None]],
) -> dict[str, Any]:
    """Per optimizer: its sweep, tuned lr, loss over seeds and gap vs dp."""
    dp = [_loss(r) for r in seeds["dp"]]
    table: dict[str, Any] = {}
    for name in args.optimizers:
        lr = tuned_lr(seed0[name])
        losses = [_loss(r) for r in seeds[name]]
        gaps = [100 * (x / b - 1) for x, b in zip(losses, dp, strict=True)]
        done = [r for r in seeds[name] if r is not None]
        row: dict[str, Any] = {
            "momentum": SWEEP[name][0],
            "sweep_seed0": {f"{k:g}": _loss(r) for k, r in seed0[name].items()},
            "tuned_lr": lr,
            "default_lr": SWEEP[name][1][0],
            "final_val_loss": _mean_std(losses),
            "gap_vs_dp_pct": _mean_std(gaps),
            "diverged": any(r["rounds_applied"] < args.rounds for r in done),
            "seconds_per_run": statistics.fmean(r["seconds"] for r in done)
            if done
            else None,
        }
        if name in ADAPTIVE:
            row.update(beta1=BETA1, beta2=BETA2 if name != "fedadagrad" else None)
            row["tau"] = TAU
        table[name] = row
    return table


def ranking(optimizers: dict[str, Any], dp: dict[str, Any]) -> list[dict[str, Any]]:
    """The validation-loss table, best first, data parallel included."""
    rows = [
        {
            "setup": f"{name} lr {row['tuned_lr']:g}",
            "loss": row["final_val_loss"]["mean"],
            "std": row["final_val_loss"]["std"],
            "seeds": row["final_val_loss"]["seeds"],
            "gap_vs_dp_pct": row["gap_vs_dp_pct"]["mean"],
        }
        for name, row in optimizers.items()
    ]
    loss = dp["final_val_loss"]
    rows.append(
        {"setup": "data parallel", "loss": loss["mean"], "std": loss["std"],
         "seeds": loss["seeds"], "gap_vs_dp_pct": 0.0}
    )  # fmt: skip
    return sorted(rows, key=lambda r: r["loss"] if math.isfinite(r["loss"]) else 1e9)


def main() -> None:
    args = parse_args()
    runner = Runner(args)
    started = time.perf_counter()
    log("outer", f"phase 1: lr sweep on seed 0 ({args.optimizers})")
    seed0 = sweep(runner, args)
    later = range(1, args.seeds)
    tuned = {name: tuned_lr(seed0[name]) for name in args.optimizers}
    log("outer", f"phase 2: tuned lrs {tuned} on seeds 1..{args.seeds - 1}")
    cases = [make_case(args, "dp", 0.0, s) for s in later] + [
        make_case(args, name, tuned[name], s) for name in args.optimizers for s in later
    ]
    found = iter(runner.results(cases))
    seeds: dict[str, list[Any]] = {"dp": [seed0["dp"][0.0]]}
    seeds["dp"] += [next(found) for _ in later]
    for name in args.optimizers:
        seeds[name] = [seed0[name][tuned[name]]] + [next(found) for _ in later]
    dp = {"final_val_loss": _mean_std([_loss(r) for r in seeds["dp"]])}
    optimizers = summarise(args, seed0, seeds)
    report = {
        "bench": "outer_optimizers",
        "workers": 4,
        "rounds": args.rounds,
        "h": args.inner_steps,
        "seeds": args.seeds,
        "codec": "dense:fp32",
        "quick": args.quick,
        "dp": dp,
        "optimizers": optimizers,
        "table": ranking(optimizers, dp),
        "not_run": {
            "sparseloco": "dense fp32 leaves no residual, so its outer step is "
            "fedavg at lr 1 (in the fedavg sweep)"
        },
        "missing_runs": runner.missing,
        "wall_seconds": time.perf_counter() - started,
        "machine": {"cpus": os.cpu_count(), "threads_per_run": 1, "jobs": args.jobs},
    }
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
