"""Round modes against slow and crashing clients: sync, deadline, async (issue 16).

Real `fedgrpc simulate` runs (`_heterogeneous_sim`: coordinator, four
client processes, loopback gRPC, signed dense fp32 updates, char-LM on a
1 MB corpus): 4 clients at `--speeds 1,1,2,4` (client 3 takes 4x as long
per inner step), without crashes and with `--crash-rate 0.1` (each client
process dies at a sync point with probability 0.1 and is restarted), for
each round mode, over 3 seeds. Per mode, settings chosen so each run
trains for a similar wall time on the shared 2-core machine:

- sync: R = 6 rounds of H = 20 inner steps (every round waits for the x4
  client);
- deadline: rounds of 2.5 s of training (about what a speed-1 client
  needs for H = 20 steps while all four share the cores), 12 rounds;
- buffered_async: a round closes at K = 2 buffered updates, updates up to
  12 versions stale are taken (so the x4 client's still land; it pushes
  about once every 4 versions) and scaled by 1/sqrt(1 + staleness), 18
  rounds.
- streaming (Streaming DiLoCo): P = 4 fragments, a sync every H/P = 5
  steps, each merged after tau = 1 overlapped step with alpha = 0.5;
  6 x P = 24 rounds, so each fragment syncs as often as sync's model.
  Its crash rate is per H steps like the others' (per sync point
  1 - 0.9^(1/P), 2.6 % at P = 4): a crash per sync point would crash it
  P times as often for the same training.

Reported per crash setting and mode (mean ± std over seeds; how each is
read off the curves: `_heterogeneous_report`): time to the target
validation loss (sync's final loss in the same seed and setting), loss
at equal wall time, loss at equal tokens, goodput; ratios to sync and the
issue's goals, met or not as measured. For streaming also its own goal:
peak bytes per sync (one update's uplink, every header and chunk byte the
client counted) against a dense fp32 sync of the same model, at most 1/4,
with loss at equal tokens within +1 % of sync (`streaming_goal`).

Wall time is measured on a shared machine: run with `--jobs 1` (the
default) so runs do not compete with each other; only figures from one
bench run compare. A full run is 24 simulations of ~50-100 s (35 min).
--cache DIR keeps every run and resumes; --only-cached reports what DIR
holds. --quick: one seed, 3 clients at speeds 1,1,4, 2-4 tiny rounds per
mode, crash rate 0.1 only (a smoke run of 4 simulations: ~1.5 min with
--jobs 2 on 2 cores, process start-up being most of it).

One JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from _convergence_pool import cached_result, run_cases
from _heterogeneous_report import crash_key, goals, summarise_setting, table
from _heterogeneous_sim import ModeCase, run_case
from _util import log, rounded

MODES = ("sync", "deadline", "buffered_async", "streaming")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--modes", default=",".join(MODES), help="comma list; must include sync")
    add("--crash-rates", default="0,0.1", help="comma list of --crash-rate values")
    add("--seeds", type=int, default=3, help="seeds per cell (default 3)")
    add("--speeds", default="1,1,2,4", help="slowdown factors, one per client")
    add("--inner-steps", type=int, default=20, help="H (default 20)")
    add("--sync-rounds", type=int, default=6, help="sync: rounds (default 6)")
    add("--deadline-s", type=float, default=2.5, help="deadline: s per round")
    add("--deadline-rounds", type=int, default=12, help="deadline: rounds")
    add("--async-rounds", type=int, default=18, help="buffered_async: rounds")
    add("--buffer-size", type=int, default=2, help="buffered_async: K (default 2)")
    add("--max-staleness", type=int, default=12, help="buffered_async: bound")
    add("--staleness-exponent", type=float, default=None,
        help="buffered_async: a in (1 + tau)^-a (default 0.5)")  # fmt: skip
    add("--fragments", type=int, default=4, help="streaming: P (default 4)")
    add("--overlap-steps", type=int, default=1, help="streaming: tau (default 1)")
    add("--streaming-inner-steps", type=int, default=None,
        help="streaming: H, if not --inner-steps (P divides it)")  # fmt: skip
    add("--max-restarts", type=int, default=None, help="per client (default 10)")
    add("--corpus-bytes", type=int, default=1_000_000, help="char-LM corpus size")
    add("--jobs", type=int, default=1, help="runs side by side (1: fair timings)")
    add("--timeout", type=float, default=3 * 3600.0, help="seconds for all runs")
    add("--cache", type=Path, help="keep each run's result here; reuse on rerun")
    add("--only-cached", action="store_true", help="report --cache, run nothing")
    add("--quick", action="store_true", help="1 seed, tiny runs: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:  # three clients: starting processes is most of a tiny run
        args.seeds, args.inner_steps, args.corpus_bytes = 1, 5, 400_000
        args.fragments, args.streaming_inner_steps = 2, 4
        args.sync_rounds, args.deadline_rounds, args.async_rounds = 2, 3, 4
        args.deadline_s, args.speeds, args.max_restarts = 0.5, "1,1,4", 1
        args.crash_rates = "0.1"  # the crash setting runs every code path
    args.modes = [m for m in args.modes.split(",") if m]
    args.crash_rates = [float(r) for r in args.crash_rates.split(",") if r]
    if "sync" not in args.modes or set(args.modes) - set(MODES):
        parser.error(f"--modes: some of {list(MODES)}, sync included")
    if min(args.seeds, args.inner_steps, args.jobs, args.sync_rounds,
           args.deadline_rounds, args.async_rounds) < 1:  # fmt: skip
        parser.error("--seeds, --inner-steps, --jobs and the rounds must be >= 1")
    args.streaming_inner_steps = args.streaming_inner_steps or args.inner_steps
    h = args.streaming_inner_steps
    if "streaming" in args.modes and (
        args.fragments < 2 or h % args.fragments
        or not 0 <= args.overlap_steps < h // args.fragments
    ):  # fmt: skip
        parser.error("--fragments must divide --inner-steps, --overlap-steps < H/P")
    if args.only_cached and args.cache is None:
        parser.error("--only-cached needs --cache")
    return args


def make_case(args: argparse.Namespace, mode: str, rate: float, seed: int) -> ModeCase:
    """One run of `mode` at crash rate `rate`, with that mode's settings."""
    per_mode: dict[str, dict[str, Any]] = {
        "sync": {"rounds": args.sync_rounds},
        "deadline": {"rounds": args.deadline_rounds,
                     "round_duration_s": args.deadline_s},
        "buffered_async": {"rounds": args.async_rounds,
                           "buffer_size": args.buffer_size,
                           "max_staleness": args.max_staleness,
                           "staleness_exponent": args.staleness_exponent},
        "streaming": {"rounds": args.sync_rounds * args.fragments,
                      "fragments": args.fragments,
                      "overlap_steps": args.overlap_steps},
    }  # fmt: skip
    label, extra = mode, {}
    if mode == "streaming":  # its settings are not in the cache key: name them
        label = f"streaming-p{args.fragments}-t{args.overlap_steps}"
        # A crash rate per H steps, like every other mode's: streaming syncs
        # P times per H, so per sync point 1 - (1 - rate)^(1/P).
        per_sync = 1.0 - (1.0 - rate) ** (1.0 / args.fragments)
        extra = {"crash_per_sync": round(per_sync, 6)}
        label += "-perH" if rate else ""
    h = args.streaming_inner_steps if mode == "streaming" else args.inner_steps
    return ModeCase(
        name=f"{label}-{crash_key(rate)}", mode=mode, crash_rate=rate, seed=seed,
        inner_steps=h, speeds=args.speeds,
        corpus_bytes=args.corpus_bytes, max_restarts=args.max_restarts,
        **per_mode[mode], **extra,
    )  # fmt: skip


def all_cases(args: argparse.Namespace) -> list[ModeCase]:
    """Seed-major, then crash setting, then mode: a stopped run resumed with
    --cache already holds whole seeds to compare."""
    return [
        make_case(args, mode, rate, seed)
        for seed in range(args.seeds)
        for rate in args.crash_rates
        for mode in args.modes
    ]


def gather(
    args: argparse.Namespace, cases: list[ModeCase]
) -> tuple[list[dict[str, Any] | None], list[str]]:
    """One result per case (None if missing with --only-cached), and what is missing."""
    if not args.only_cached:
        results = run_cases(cases, args.jobs, args.timeout, args.cache, run_case)
        return list(results), []
    found = [cached_result(args.cache, case) for case in cases]
    missing = [f"{c.name} seed {c.seed}" for c, r in zip(cases, found, strict=True)
               if r is None]  # fmt: skip
    return found, missing


def summarise(
    args: argparse.Namespace,
    cases: list[ModeCase],
    results: list[dict[str, Any] | None],
) -> dict[str, Any]:
    """Per crash setting, over the seeds whose every mode ran."""
    pairs = zip(cases, results, strict=True)
    by_key = {(c.mode, c.crash_rate, c.seed): r for c, r in pairs if r is not None}
    settings: dict[str, Any] = {}
    for rate in args.crash_rates:
        seeds = [s for s in range(args.seeds)
                 if all((m, rate, s) in by_key for m in args.modes)]  # fmt: skip
        if not seeds:
            continue
        runs = {(m, s): by_key[(m, rate, s)] for m in args.modes for s in seeds}
        settings[crash_key(rate)] = {
            "crash_rate": rate,
            "seeds": seeds,
            **summarise_setting(args.modes, seeds, runs),
        }
    return settings


def streaming_goal(
    settings: dict[str, Any], results: list[dict[str, Any] | None]
) -> dict[str, Any]:
    """Peak bytes per sync vs dense fp32 (<= 1/4) at <= +1 % loss (equal tokens)."""
    runs = [r for r in results if r is not None and r["mode"] == "streaming"]
    if not runs or "updates" not in runs[0]:
        return {"measured": False}
    per_sync = max(r["bytes_up"] / max(1, r["updates"]) for r in runs)
    dense = 4 * runs[0]["num_parameters"]
    losses = {key: s["vs_sync"].get("streaming", {}).get("loss_at_equal_tokens_pct")
              for key, s in settings.items()}  # fmt: skip
    ratio = per_sync / dense
    return {
        "met": ratio <= 0.25
        and all(v is not None and v <= 1.0 for v in losses.values()),
        "peak_bytes_per_sync": per_sync,
        "dense_fp32_bytes_per_sync": dense,
        "ratio": ratio,
        "loss_at_equal_tokens_pct": losses,
        "bytes_met": ratio <= 0.25,
        "loss_met": all(v is not None and v <= 1.0 for v in losses.values()),
    }


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    cases = all_cases(args)
    log("heterogeneous", f"{len(cases)} runs: {args.modes} x crash "
        f"{args.crash_rates} x {args.seeds} seeds")  # fmt: skip
    results, missing = gather(args, cases)
    settings = summarise(args, cases, results)
    done = [r for r in results if r is not None]
    report = {
        "bench": "heterogeneous",
        "task": "charlm",
        "speeds": args.speeds,
        "h": args.inner_steps,
        "seeds": args.seeds,
        "quick": args.quick,
        "mode_settings": {
            c.mode: c.flags()
            for c in cases
            if c.seed == 0 and c.crash_rate == args.crash_rates[0]
        },
        "settings": settings,
        "table": table(settings),
        "goals": goals(settings, args.modes) if settings else {},
        "streaming_goal": streaming_goal(settings, results)
        if settings and "streaming" in args.modes
        else {},
        "missing_runs": missing,
        "seconds_per_run": statistics.fmean(r["seconds"] for r in done)
        if done
        else None,
        "wall_seconds": time.perf_counter() - started,
        "machine": {"cpus": os.cpu_count(), "jobs": args.jobs},
    }
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
