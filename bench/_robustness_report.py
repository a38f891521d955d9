"""bench/robustness.py's tables, trust figures, round share and goals.

Not a benchmark itself. Results are looked up by run name
(`{config}-{attack}-{rule}[-trust]`, as `robustness.make_case` names them)
and seed; a missing run counts as missing, never as a number.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from typing import Any

from _util import log

TRUST_WITHIN = 5
"""The goal's horizon: an attacker must be hard-quarantined by this round."""
SHARE_SIZE, SHARE_CLIENTS = "10.5M", 8


def _index(found: dict[Any, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(c.name, c.seed): r for c, r in found.items() if r is not None}


def _loss(result: dict[str, Any] | None) -> float:
    if result is None or result["final_val_loss"] is None:
        return math.nan
    return float(result["final_val_loss"])


def _mean_of(values: Any) -> float | None:
    """Mean of the values that are there (older cached runs lack some fields)."""
    present = [float(v) for v in values if v is not None]
    return statistics.fmean(present) if present else None


def mean_std(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if math.isfinite(v)]
    return {
        "mean": statistics.fmean(finite) if finite else math.nan,
        "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
        "seeds": len(finite),
    }


def _cell(
    runs: dict[tuple[str, int], dict[str, Any]], name: str, base: str, seeds: int
) -> dict[str, Any] | None:
    """One (config, attack, rule) over the seeds it has; gaps paired by seed."""
    got = [(s, runs[(name, s)]) for s in range(seeds) if (name, s) in runs]
    if not got:
        return None
    losses = [_loss(r) for _, r in got]
    gaps = [
        100 * (_loss(r) / _loss(runs[(base, s)]) - 1)
        for s, r in got
        if (base, s) in runs
    ]
    agg = sum(r["aggregate_s"] for _, r in got)
    total = sum(r["round_s"] for _, r in got)
    return {
        "final_val_loss": mean_std(losses),
        "gap_pct": mean_std(gaps),
        "backdoor_success": statistics.fmean(r["backdoor_success"] for _, r in got),
        "rounds_voided_by_guard": sum(r["rounds_voided_by_guard"] for _, r in got),
        "aggregate_share_of_sim_round": agg / total if total else None,
        "seconds_per_run": statistics.fmean(r["seconds"] for _, r in got),
        "cpu_seconds_per_run": _mean_of(r.get("cpu_seconds") for _, r in got),
    }


def report_grid(
    args: argparse.Namespace,
    found: dict[Any, Any],
    configs: dict[str, tuple[int, int]],
    headline: tuple[str, ...],
) -> dict[str, Any]:
    """Cells, the per-attack best rule and a compact gap table per config."""
    runs = _index(found)
    cells: dict[str, Any] = {}
    best: dict[str, Any] = {}
    table: dict[str, Any] = {}
    rules = list(dict.fromkeys([*args.rules, args.default_rule]))
    for config in args.configs:
        base = f"{config}-none-mean"
        cells[config], best[config], table[config] = {}, {}, {}
        for attack in ("none", *args.attacks):
            row = {}
            for rule in rules:
                cell = _cell(runs, f"{config}-{attack}-{rule}", base, args.seeds)
                if cell is not None:
                    row[rule] = cell
            cells[config][attack] = row
            table[config][attack] = {
                r: round(c["gap_pct"]["mean"], 2) for r, c in row.items()
            }
            losses = {r: c["final_val_loss"]["mean"] for r, c in row.items()
                      if math.isfinite(c["final_val_loss"]["mean"])}  # fmt: skip
            if losses and attack != "none":
                rule = min(losses, key=losses.__getitem__)
                best[config][attack] = {"rule": rule, "gap_pct": row[rule]["gap_pct"],
                                        "headline": attack in headline,
                                        "of_rules": sorted(losses)}  # fmt: skip
    return {"cells": cells, "best_rule": best, "gap_pct_table": table}


def report_trust(args: argparse.Namespace, found: dict[Any, Any]) -> dict[str, Any]:
    """Rounds to hard quarantine; precision / recall of 'within TRUST_WITHIN'."""
    runs = _index(found)
    per_run: dict[str, Any] = {}
    tp = fp = fn = 0
    for config in args.configs:
        base = runs.get((f"{config}-none-mean", 0))
        for attack in ("none", *args.attacks):
            name = f"{config}-{attack}-{args.default_rule}-trust"
            result = runs.get((name, 0))
            if result is None:
                continue
            first = result["first_quarantine_round"]
            attackers = set(result["attackers"])
            caught = {c for c, r in first.items() if r <= TRUST_WITHIN}
            hits, false = len(caught & attackers), len(caught - attackers)
            tp, fp, fn = tp + hits, fp + false, fn + len(attackers - caught)
            per_run[f"{config}-{attack}"] = {
                "attacker_first_quarantine_round": {
                    c: first.get(c) for c in sorted(attackers)
                },
                "honest_quarantined": sorted(set(first) - attackers),
                "quarantined_within_5": {"true_pos": hits, "false_pos": false,
                                         "false_neg": len(attackers - caught)},
                "final_val_loss": _loss(result),
                "gap_pct": 100 * (_loss(result) / _loss(base) - 1) if base else None,
                "backdoor_success": result["backdoor_success"],
            }  # fmt: skip
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    return {
        "rule": args.default_rule,
        "within_rounds": TRUST_WITHIN,
        "precision": precision,
        "recall": recall,
        "counts": {"true_pos": tp, "false_pos": fp, "false_neg": fn},
        "runs": per_run,
    }


def share_of_round(args: argparse.Namespace) -> dict[str, Any] | None:
    """Robust aggregation / round time at 10.5M x 8 (bench/robust_aggregation.py).

    Aggregation alone for every robust rule in --rules (one child process,
    the coordinator's spool), then real `fedgrpc serve --aggregator
    <default rule>` rounds with 8 DiLoCoClient processes. The default rule's
    share is measured; another rule's is estimated as its aggregation time
    over the same round with the default's aggregation swapped for it.
    Cached as `share.json` in --cache.
    """
    path = args.cache / "share.json" if args.cache else None
    if path is not None and path.exists():
        cached: dict[str, Any] = json.loads(path.read_text())
        return cached
    if args.only_cached:
        return None
    from _util import parse_size
    from robust_aggregation import measure_rounds, run_aggregation
    from round_latency import mlp_shape

    shape = mlp_shape(parse_size(SHARE_SIZE))
    d = shape[1] * (shape[0] * shape[0] + shape[0])
    rules = tuple(
        dict.fromkeys(r for r in (args.default_rule, *args.rules) if r != "mean")
    )
    log("robustness", f"share: aggregation alone, {d} x {SHARE_CLIENTS}, {rules}")
    alone = run_aggregation(d, SHARE_CLIENTS, rules, "")
    log("robustness", f"share: serve rounds with {args.default_rule}")
    rounds = measure_rounds(
        SHARE_SIZE, SHARE_CLIENTS, args.default_rule, args.share_rounds
    )
    round_s = rounds["coordinator_round_s_median"]
    spent = {r: v["aggregate_s"] for r, v in alone.get("rules", {}).items()}
    own = spent.get(args.default_rule, 0.0)
    shares = {r: s / (round_s - own + s) for r, s in spent.items()}
    out = {
        "params": d, "clients": SHARE_CLIENTS, "round_rule": args.default_rule,
        "round_s_median": round_s, "aggregate_s": spent, "share_of_round": shares,
        "measured": args.default_rule, "note": "other rules' shares are estimated: "
        "the default rule's round with its aggregation time swapped for theirs",
    }  # fmt: skip
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out))
    return out


def _goal(text: str, value: Any, met: bool | None) -> dict[str, Any]:
    return {"goal": text, "value": value, "met": met}


def goals(report: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The issue's goals next to what was measured (met: None = not measured)."""
    out = []
    for config, limit in (("25", 2.0), ("30", 5.0)):
        for attack in ("signflip", "scaling", "alie"):
            best = report["best_rule"].get(config, {}).get(attack)
            gap = None if best is None else best["gap_pct"]["mean"]
            out.append(_goal(
                f"best rule within +{limit:g} % of no-attack, {attack} at {config} %",
                None if best is None else {"rule": best["rule"], "gap_pct": gap},
                None if gap is None else gap <= limit,
            ))  # fmt: skip
    for config in args.configs:
        cell = report["cells"][config]["none"].get(args.default_rule)
        gap = None if cell is None else cell["gap_pct"]
        out.append(_goal(
            f"default robust rule ({args.default_rule}) <= +0.5 % with no attack, "
            f"{config} % config", gap, None if gap is None else gap["mean"] <= 0.5,
        ))  # fmt: skip
    trust = report["trust"]
    if trust is not None:
        p, r = trust["precision"], trust["recall"]
        met = None if p is None or r is None else p >= 0.9 and r >= 0.9
        out.append(_goal(f"attackers hard-quarantined within {TRUST_WITHIN} rounds, "
                         "precision and recall >= 0.9", {"precision": p, "recall": r},
                         met))  # fmt: skip
    for config in args.configs:
        row = report["cells"][config].get("backdoor", {})
        if not row:
            continue
        rule = min(row, key=lambda k: row[k]["backdoor_success"])
        success = row[rule]["backdoor_success"]
        every = {k: v["backdoor_success"] for k, v in row.items()}
        out.append(_goal(f"backdoor success <= 5 % with the best rule, {config} %",
                         {"rule": rule, "success": success, "all_rules": every},
                         success <= 0.05))  # fmt: skip
    share = report["share"]
    if share is not None:
        value = share["share_of_round"].get(args.default_rule)
        out.append(
            _goal(
                "robust aggregation <= 20 % of round time at 10.5M x 8",
                share["share_of_round"],
                None
                if value is None
                else all(v <= 0.2 for v in share["share_of_round"].values()),
            )
        )
    return out
