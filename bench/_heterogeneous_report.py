"""The figures bench/heterogeneous.py reports, from its runs' evaluation curves.

Not a benchmark itself. Every run's curve is the global model's validation
loss per evaluated version, each with `elapsed_s` (since the start gate)
and `tokens` (all clients', wasted ones included). The model a mode *has*
at time t (or after n tokens) is the last version evaluated by then, so
every figure reads that step function:

- target: per seed and crash setting, the validation loss `sync` ends its
  run with (the issue's "time to a target loss" needs a loss sync reaches;
  its own final one is the hardest such target that sync still meets);
- time to target: the first `elapsed_s` whose loss is <= the target
  (None if the run never got there);
- loss at equal wall time: at T, the shortest run's last evaluation time
  over every mode and seed of the crash setting, so every run has a model
  at T and all are read at the same T;
- loss at equal tokens: likewise at N, the fewest tokens any run of the
  crash setting had processed at its last evaluation;
- goodput: the simulator's (useful / all client compute, crashed and
  refused work counted as compute).

Means and sample standard deviations over seeds; ratios and percentages
are of the means, within this one bench run (the machine is shared, so
only figures measured side by side compare).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

GOODPUT_GOAL = 0.95
TIME_RATIO_GOAL = 0.6
TOKEN_LOSS_GOAL_PCT = 1.0
Result = dict[str, Any]


def crash_key(rate: float) -> str:
    """'no_crash' or 'crash_0.1': a crash setting's key in the report."""
    return "no_crash" if rate == 0 else f"crash_{rate:g}"


def loss_at(evaluations: list[dict[str, float]], axis: str, budget: float) -> float:
    """Validation loss of the last version evaluated at `axis` <= `budget`."""
    seen = [e["val_loss"] for e in evaluations if e[axis] <= budget]
    return seen[-1] if seen else math.nan


def time_to(evaluations: list[dict[str, float]], target: float) -> float | None:
    """Seconds from the start gate to the first version at or below `target`."""
    return next((e["elapsed_s"] for e in evaluations if e["val_loss"] <= target), None)


def mean_std(values: list[float | None]) -> dict[str, Any]:
    """Mean and std over the finite values; `per_seed` keeps them all (None: n/a)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": statistics.fmean(finite) if finite else None,
        "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
        "per_seed": [None if v is None or not math.isfinite(v) else v for v in values],
        "seeds": len(finite),
    }


def summarise_setting(
    modes: list[str], seeds: list[int], runs: dict[tuple[str, int], Result]
) -> dict[str, Any]:
    """One crash setting: target, budgets, each mode's figures, ratios to sync."""
    ends = [r["evaluations"][-1] for r in runs.values()]
    wall_budget = min(e["elapsed_s"] for e in ends)
    token_budget = min(e["tokens"] for e in ends)
    targets = {s: runs[("sync", s)]["final_val_loss"] for s in seeds}
    figures: dict[str, Any] = {}
    for mode in modes:
        mine = [runs[(mode, s)] for s in seeds]
        figures[mode] = {
            "time_to_target_s": mean_std(
                [
                    time_to(r["evaluations"], targets[s])
                    for r, s in zip(mine, seeds, strict=True)
                ]
            ),
            "val_loss_at_equal_time": mean_std(
                [loss_at(r["evaluations"], "elapsed_s", wall_budget) for r in mine]
            ),
            "val_loss_at_equal_tokens": mean_std(
                [loss_at(r["evaluations"], "tokens", token_budget) for r in mine]
            ),
            "goodput": mean_std([r["goodput"] for r in mine]),
            "final_val_loss": mean_std([r["final_val_loss"] for r in mine]),
            "train_wall_s": mean_std([r["train_wall_s"] for r in mine]),
            "tokens": mean_std([float(r["tokens"]) for r in mine]),
            "crashes": mean_std([float(r["crashes"]) for r in mine]),
            "rounds_applied": mean_std([float(r["rounds_applied"]) for r in mine]),
        }
    return {
        "target_val_loss": mean_std(list(targets.values())),
        "wall_budget_s": wall_budget,
        "token_budget": token_budget,
        "modes": figures,
        "vs_sync": {m: _vs_sync(figures[m], figures["sync"]) for m in modes},
    }


def _vs_sync(mode: dict[str, Any], sync: dict[str, Any]) -> dict[str, Any]:
    """Time-to-target ratio and loss differences (%) of the means against sync.

    The ratio is None unless every seed of both reached the target.
    """
    time, base = mode["time_to_target_s"], sync["time_to_target_s"]
    complete = all(v is not None for v in time["per_seed"] + base["per_seed"])
    return {
        "time_to_target_ratio": time["mean"] / base["mean"]
        if complete and base["mean"]
        else None,
        "target_reached_seeds": sum(v is not None for v in time["per_seed"]),
        "loss_at_equal_time_pct": _pct(mode, sync, "val_loss_at_equal_time"),
        "loss_at_equal_tokens_pct": _pct(mode, sync, "val_loss_at_equal_tokens"),
    }


def _pct(mode: dict[str, Any], sync: dict[str, Any], key: str) -> float | None:
    """(mode / sync - 1) x 100 of the means (> 0: the mode's loss is higher)."""
    a, b = mode[key]["mean"], sync[key]["mean"]
    return None if a is None or not b else 100.0 * (a / b - 1.0)


def goals(settings: dict[str, Any], modes: list[str]) -> dict[str, Any]:
    """The issue's goals, measured: per mode and crash setting, and overall.

    Overall `met`: some non-sync mode meets the goal in every crash setting
    measured (`modes_meeting` names them).
    """
    contenders = [m for m in modes if m != "sync"]

    def verdict(check: Any) -> dict[str, Any]:
        by_mode = {m: {c: check(s, m) for c, s in settings.items()} for m in contenders}
        meeting = [m for m, v in by_mode.items() if all(x["met"] for x in v.values())]
        return {"met": bool(meeting), "modes_meeting": meeting, "by_mode": by_mode}

    def goodput(setting: dict[str, Any], mode: str) -> dict[str, Any]:
        value = setting["modes"][mode]["goodput"]["mean"]
        sync = setting["modes"]["sync"]["goodput"]["mean"]
        return {"goodput": value, "sync_goodput": sync,
                "met": value is not None and value >= GOODPUT_GOAL}  # fmt: skip

    def time_ratio(setting: dict[str, Any], mode: str) -> dict[str, Any]:
        ratio = setting["vs_sync"][mode]["time_to_target_ratio"]
        return {"ratio": ratio, "met": ratio is not None and ratio <= TIME_RATIO_GOAL}

    def token_loss(setting: dict[str, Any], mode: str) -> dict[str, Any]:
        pct = setting["vs_sync"][mode]["loss_at_equal_tokens_pct"]
        return {"pct": pct, "met": pct is not None and pct <= TOKEN_LOSS_GOAL_PCT}

    return {
        "goodput_at_least_95pct": verdict(goodput),
        "time_to_target_at_most_0.6x_sync": verdict(time_ratio),
        "loss_at_equal_tokens_within_1pct_of_sync": verdict(token_loss),
    }  # streaming's own goal (peak bytes per sync): `streaming_goal`


def table(settings: dict[str, Any]) -> list[str]:
    """One line per crash setting and mode: the four figures, mean ± std."""

    def cell(figure: dict[str, Any], fmt: str) -> str:
        if figure["mean"] is None:
            return "n/a"
        missing = len(figure["per_seed"]) - figure["seeds"]
        note = f" ({missing} n/a)" if missing else ""
        return f"{figure['mean']:{fmt}} ± {figure['std']:{fmt}}{note}"

    lines = ["setting / mode: time to target s | loss @ equal time | "
             "loss @ equal tokens | goodput"]  # fmt: skip
    for name, setting in settings.items():
        lines.append(
            f"{name}: target {setting['target_val_loss']['mean']:.4f}, "
            f"T {setting['wall_budget_s']:.1f} s, N {setting['token_budget']:,.0f}"
        )
        for mode, f in setting["modes"].items():
            lines.append(
                f"  {mode:<15}{cell(f['time_to_target_s'], '.1f')} | "
                f"{cell(f['val_loss_at_equal_time'], '.4f')} | "
                f"{cell(f['val_loss_at_equal_tokens'], '.4f')} | "
                f"{cell(f['goodput'], '.3f')}"
            )
    return lines
