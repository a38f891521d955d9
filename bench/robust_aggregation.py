"""Robust aggregators over the disk spool: memory, time, and share of a round.

Two parts, each bounded:

1. **Aggregation alone** (one child process per model size x client count,
   so its RSS is its own): n updates of d float32 values are spooled to disk
   exactly as the coordinator does (`SpoolAccumulator`, 1 MiB chunks), then
   every rule aggregates them into a fresh d-long buffer. Per rule: seconds,
   spool passes, and the peak RSS *added* by the rule (Linux `clear_refs` 5
   resets VmHWM before each rule) in units of the model's d x 4 bytes. The
   goal is <= 3x the model plus O(clients x block): the output buffer is 1x,
   centered clipping keeps 1x more (the previous aggregate), blocks are
   32 MiB. The spool's files are read with `readinto`, never mapped, so the
   page cache does not count toward RSS.
2. **Share of a round** (`--round-size` x `--round-clients`, default 10.5M x
   8): a real `fedgrpc serve --aggregator RULE` with that many DiLoCoClient
   processes (H = 1, as `round_latency.py`), the coordinator's median round
   duration (AdminService), against part 1's aggregation time at the same
   size. The goal is robust aggregation <= 20 % of the round.

Prints one JSON object on stdout; progress goes to stderr. MB is 10^6 bytes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from _util import (
    CTX,
    MB,
    collect_reports,
    log,
    log_tail,
    parse_size,
    proc_status_bytes,
    rounded,
    start_coordinator,
    stop_all,
)

RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum",
         "geometric_median", "centered_clipping", "hybrid")  # fmt: skip
CHUNK = (1 << 20) // 4  # coordinates per 1 MiB chunk, as the wire sends them


# -- part 1: one child process per (d, n) -------------------------------------------


def _rss() -> int:
    return proc_status_bytes(os.getpid(), "VmRSS")


def _reset_peak() -> None:
    """VmHWM := VmRSS (Linux >= 4.0, `clear_refs` value 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def _build(rule: str) -> Any:
    from fedgrpc.aggregate import NormBounded, WeightedMean
    from fedgrpc.coordinator.strategy.plugins import load_aggregator

    if rule == "mean":  # over the spool, as with a norm bound (the sum path is O(d))
        return NormBounded(WeightedMean(), multiple=1e30)
    return load_aggregator(rule)


def _spool_updates(directory: Path, d: int, n: int) -> Any:
    """n committed updates: a shared direction plus per-client noise, chunked."""
    import numpy as np

    from fedgrpc.aggregate import SpoolAccumulator

    spool = SpoolAccumulator(directory, d, n)
    rng = np.random.default_rng(0)
    scratch = np.empty(0, np.float32)
    for start in range(0, d, CHUNK):
        size = min(CHUNK, d - start)
        shared = rng.standard_normal(size, dtype=np.float32)
        for key in range(n):
            noise = rng.standard_normal(size, dtype=np.float32)
            noise *= np.float32(0.3)
            noise += shared
            spool.add_values(key, start, noise, 1.0, scratch)
    for key in range(n):
        spool.commit_update(key, 1.0 + key)
    return spool


def aggregation_child(
    d: int, n: int, rules: tuple[str, ...], root: str, out: Any
) -> None:
    try:
        out.put(_aggregation(d, n, rules, Path(root)))
    except BaseException:
        out.put({"error": traceback.format_exc()})


def _aggregation(d: int, n: int, rules: tuple[str, ...], root: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(2)
    model_bytes = 4 * d
    started = time.perf_counter()
    spool = _spool_updates(root / "round", d, n)
    spool_s = time.perf_counter() - started
    results: dict[str, Any] = {}
    try:
        for rule in rules:
            aggregator = _build(rule)
            gc.collect()
            baseline = _rss()
            _reset_peak()
            begun = time.perf_counter()
            out = torch.empty(d, dtype=torch.float32)
            aggregator.aggregate(spool.held(), out)
            seconds = time.perf_counter() - begun
            peak = proc_status_bytes(os.getpid(), "VmHWM")
            results[rule] = {
                "aggregate_s": seconds,
                "added_peak_rss_mb": (peak - baseline) / MB,
                "added_peak_over_model": (peak - baseline) / model_bytes,
            }
            inner = getattr(aggregator, "inner", aggregator)
            if hasattr(inner, "last_iterations"):
                results[rule]["weiszfeld_steps"] = inner.last_iterations
            del out, aggregator
            log("robust_aggregation", f"{d} x {n} {rule}: {results[rule]}")
    finally:
        spool.discard()
    return {
        "params": d, "clients": n, "model_mb": model_bytes / MB,
        "spool_mb": n * model_bytes / MB, "spool_write_s": spool_s,
        "process_rss_mb_before_rules": _rss() / MB, "rules": results,
    }  # fmt: skip


def run_aggregation(d: int, n: int, rules: tuple[str, ...], spool_dir: str) -> Any:
    need = 4 * d * n
    free = shutil.disk_usage(spool_dir or tempfile.gettempdir()).free
    if free < 1.2 * need:
        log("robust_aggregation", f"skip {d} x {n}: {need / MB:.0f} MB > free disk")
        return {"params": d, "clients": n, "skipped": "disk", "free_mb": free / MB}
    with tempfile.TemporaryDirectory(
        prefix="fedgrpc-robust-", dir=spool_dir or None
    ) as tmp:
        queue = CTX.Queue()
        child = CTX.Process(target=aggregation_child, args=(d, n, rules, tmp, queue))
        child.start()
        try:
            timeout = 300 + 40 * len(rules) * need / 1e9  # ~2.5 s/GB per pass
            (report,) = collect_reports(queue, [child], timeout)
        finally:
            stop_all([child])
    return report


# -- part 2: the same rules inside real rounds --------------------------------------


def measure_rounds(size: str, clients: int, rule: str, rounds: int) -> dict[str, Any]:
    """`fedgrpc serve --aggregator RULE` + `clients` DiLoCoClient processes."""
    from round_latency import (
        FP32_BYTES,
        SERVE_FLAGS,
        client_main,
        coordinator_view,
        mlp_shape,
    )

    shape = mlp_shape(parse_size(size))
    params = shape[1] * (shape[0] * shape[0] + shape[0])
    model_mb = FP32_BYTES * params / MB
    procs: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="fedgrpc-robust-rounds-") as tmp:
        try:
            flags = ("--min-clients", str(clients), "--aggregator", rule,
                     "--spool-dir", tmp, "--max-update-norm-growth", "0",
                     *SERVE_FLAGS)  # fmt: skip
            coord, address = start_coordinator(Path(tmp), *flags)
            procs.append(coord)
            baseline = proc_status_bytes(coord.pid, "VmRSS")
            sync = (CTX.Barrier(clients), CTX.Queue())
            job = (address, shape, rounds + 1, sync)
            procs += [CTX.Process(target=client_main, args=job) for _ in range(clients)]
            for proc in procs[1:]:
                proc.start()
            collect_reports(
                sync[-1], procs, 180 + (rounds + 1) * (20 + clients * model_mb / 20)
            )
            peak = proc_status_bytes(coord.pid, "VmHWM")
            view = coordinator_view(address, rounds)
        except BaseException:
            log("robust_aggregation", "coordinator log:\n" + log_tail(Path(tmp)))
            raise
        finally:
            stop_all(procs)
    return {
        "rule": rule, "params": params, "clients": clients,
        "coordinator_round_s_median": view["round_s"],
        "coordinator_peak_rss_over_model": peak / (FP32_BYTES * params),
        "coordinator_peak_net_over_model": (peak - baseline) / (FP32_BYTES * params),
    }  # fmt: skip


# -- report ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="10.5Mx8,10.5Mx16,100Mx16",
                        help="aggregation-alone cases: SIZExCLIENTS,...")  # fmt: skip
    parser.add_argument("--rules", default=",".join(RULES), help="rules to run")
    parser.add_argument("--round-size", default="10.5M", help="part 2 model size")
    parser.add_argument("--round-clients", type=int, default=8, help="part 2 clients")
    parser.add_argument("--round-rules", help="part 2 rules ('' skips)",
                        default="mean,median,krum,geometric_median,"
                        "centered_clipping,hybrid")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds")
    parser.add_argument("--spool-dir", default="", help="where spools go")
    parser.add_argument("--quick", action="store_true", help="1M x 4 smoke")
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.round_size, args.round_clients = "1Mx4", "1M", 2
        args.round_rules, args.rounds = "krum", 1
    return args


BLOCK_ALLOWANCE = 4 * (32 << 20)
"""The O(clients x block) term: one 32 MiB block, Krum's float64 copy of it
and the temporaries of one block's arithmetic, whatever d is."""


def goals(report: dict[str, Any]) -> dict[str, bool | None]:
    """Added RSS <= 3x model + the block allowance; <= 20 % of the round."""
    measured = [c for c in report["aggregation"] if "rules" in c]
    memory = all(
        r["added_peak_rss_mb"] * MB <= 3 * 4 * c["params"] + BLOCK_ALLOWANCE
        for c in measured
        for r in c["rules"].values()
    )
    shares = [r["aggregate_share_of_round"] for r in report["rounds"]
              if r["rule"] != "mean"]  # fmt: skip
    return {
        "added_rss<=3x_model+blocks": memory if measured else None,
        "robust_aggregation<=20%_of_round": all(s <= 0.2 for s in shares)
        if shares
        else None,
    }


def main() -> None:
    args = parse_args()
    rules = tuple(r for r in args.rules.split(",") if r)
    aggregation = []
    for case in filter(None, args.cases.split(",")):
        size, clients = case.lower().split("x")
        d, n = parse_size(size), int(clients)
        log("robust_aggregation", f"aggregation alone: {d} x {n}")
        aggregation.append(run_aggregation(d, n, rules, args.spool_dir))
    rounds = []
    round_rules = [r for r in args.round_rules.split(",") if r]
    if round_rules:
        from round_latency import mlp_shape

        shape = mlp_shape(parse_size(args.round_size))
        d = shape[1] * (shape[0] * shape[0] + shape[0])
        alone = run_aggregation(
            d, args.round_clients, tuple(round_rules), args.spool_dir
        )
        aggregation.append(alone)
        for rule in round_rules:
            log("robust_aggregation", f"rounds: {rule} {d} x {args.round_clients}")
            got = measure_rounds(args.round_size, args.round_clients, rule, args.rounds)
            spent = alone.get("rules", {}).get(rule, {}).get("aggregate_s")
            if spent is not None:
                got["aggregate_s"] = spent
                got["aggregate_share_of_round"] = (
                    spent / got["coordinator_round_s_median"]
                )
            rounds.append(got)
            log("robust_aggregation", json.dumps(rounded(got)))
    report: dict[str, Any] = {
        "bench": "robust_aggregation",
        "aggregation": aggregation,
        "rounds": rounds,
        "machine": {"cpus": os.cpu_count()},
        "note": "mean here reads the spool (as with a norm bound); its sum path "
        "is the default and costs no pass over a spool",
    }
    report["goals"] = goals(report)
    report["aggregate_s_median"] = {
        rule: statistics.median(
            c["rules"][rule]["aggregate_s"] for c in aggregation
            if rule in c.get("rules", {})
        )
        for rule in rules
        if any(rule in c.get("rules", {}) for c in aggregation)
    }  # fmt: skip
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
