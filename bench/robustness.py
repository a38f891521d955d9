"""Byzantine robustness: every attack x every rule against a no-attack mean (issue 13).

In-process DiLoCo on `fedgrpc simulate`'s char-LM (~136k parameters), no
gRPC (`_robustness_sim`): W workers, f of them attackers, R rounds of H
inner AdamW steps, dense fp32 updates. Each round's updates go through the
coordinator's real stages built from a `CoordinatorConfig` as `fedgrpc
serve` builds them: the Accumulator (streaming sum for mean, the disk spool
otherwise), the built-in Aggregator with its defaults, the sample
weighting, the divergence guard, the TrustBook (when on) and the outer
optimizer (nesterov, library default lr and momentum). Attackers use
`fedgrpc.sim.attacks` / `fedgrpc.sim.poison` with their default parameters
(scaling x10, gaussian 10 x rms, ALIE z_max(n, f), IPM eps 0.5, backdoor
x1).

Grid: configs `25` (8 workers, 2 attackers) and `30` (10 workers, 3);
attacks signflip, scaling, gaussian, labelflip, backdoor, alie, ipm, plus
`none`; rules mean, median, trimmed_mean, krum, geometric_median,
centered_clipping, hybrid. Seed 0 runs every cell; the headline rows
(signflip, scaling, alie), the no-attack mean (the baseline) and the
default robust rule with no attack run --seeds seeds. Gaps are percent of
the no-attack mean's loss of the same seed. The default robust rule is
`hybrid` (norm bound at 1 x the median norm, then trimmed mean: the
issue's hybrid pipeline), settable with --default-rule.

Trust is a separate pass, so the grid measures the rules alone (with trust
on, a quarantined attacker leaves even the mean): the default rule with
`trust = "on"` and its default settings, every attack and `none`, every
config, seed 0. Reported: the round each attacker is first hard-quarantined
and precision / recall of "hard-quarantined within 5 rounds" (positives:
attackers; an honest client quarantined is a false positive), pooled over
the attacks and per attack.

Backdoor success (`fedgrpc.sim.poison.backdoor_success`: trigger prompts
whose argmax next byte is the target) is measured on every final model.
The robust aggregation's share of round time at 10.5M x 8 clients calls
bench/robust_aggregation.py's functions (aggregation alone for each rule,
then real `fedgrpc serve` rounds with the default rule); --no-share skips it.

Budget: R = 12, H = 25 (300 steps per worker). TrainDefaults measured one
step at ~20 ms on a quiet core, so a run is 8 (or 10) x 300 steps ~ 50 (60)
s plus ~5 s of data loading and evaluation; the full grid (2 x 8 x 7 seed-0
cells, 2 x 3 x 7 x 2 more seeds of headline rows, baselines, 16 trust runs:
~220 runs) takes ~1.8 h with --jobs 2 on a quiet machine. --cache DIR
keeps every run and resumes; --only-cached reports what DIR holds.

One JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from _convergence_pool import cached_result, run_cases
from _robustness_report import goals, report_grid, report_trust, share_of_round
from _robustness_sim import RobustCase, run_case
from _util import log, rounded

ATTACKS = ("signflip", "scaling", "gaussian", "labelflip", "backdoor", "alie", "ipm")
RULES = ("mean", "median", "trimmed_mean", "krum", "geometric_median",
         "centered_clipping", "hybrid")  # fmt: skip
CONFIGS = {"25": (8, 2), "30": (10, 3)}
"""Config name -> (workers, attackers)."""
HEADLINE = ("signflip", "scaling", "alie")
DEFAULT_RULE = "hybrid"


def _names(
    parser: argparse.ArgumentParser, text: str, known: tuple[str, ...]
) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"unknown {unknown}; expected some of {list(known)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--rounds", type=int, default=12, help="outer rounds (default 12)")
    add("--inner-steps", type=int, default=25, help="H, inner steps per round")
    add("--seeds", type=int, default=3, help="seeds of the headline rows (default 3)")
    add("--attacks", help=f"comma list (default all: {','.join(ATTACKS)})")
    add("--rules", help=f"comma list (default all: {','.join(RULES)})")
    add("--configs", help="25 (8 workers, 2 attack) and/or 30 (10 workers, 3 "
        "attack); default both")  # fmt: skip
    add("--default-rule", default=DEFAULT_RULE, help="the default robust rule")
    add("--eval-batches", type=int, default=50, help="final eval, 32 windows each")
    add("--no-trust", action="store_true", help="skip the trust pass")
    add("--no-share", action="store_true", help="skip the 10.5M x 8 round-share part")
    add("--share-rounds", type=int, default=2, help="measured serve rounds (share)")
    add("--jobs", type=int, default=1, help="processes running runs side by side")
    add("--timeout", type=float, default=6 * 3600.0, help="seconds for all runs")
    add("--cache", type=Path, help="keep each run's result here; reuse on rerun")
    add("--only-cached", action="store_true", help="report --cache, run nothing")
    add("--quick", action="store_true", help="2 rounds, H=5, tiny grid: a smoke run")
    args = parser.parse_args(argv)
    quick = args.quick
    if quick:
        args.rounds, args.inner_steps, args.eval_batches, args.seeds = 2, 5, 4, 1
        args.no_share = True
    # --quick: a tiny grid unless the filters say otherwise.
    args.attacks = args.attacks or ("signflip" if quick else ",".join(ATTACKS))
    args.rules = args.rules or ("mean,hybrid" if quick else ",".join(RULES))
    args.configs = args.configs or ("25" if quick else ",".join(CONFIGS))
    args.attacks = _names(parser, args.attacks, ATTACKS)
    args.rules = _names(parser, args.rules, RULES)
    args.configs = _names(parser, args.configs, tuple(CONFIGS))
    if args.default_rule not in RULES:
        parser.error(f"--default-rule {args.default_rule!r}: expected one of {RULES}")
    if min(args.rounds, args.inner_steps, args.seeds, args.jobs) < 1:
        parser.error("--rounds, --inner-steps, --seeds, --jobs must be >= 1")
    if args.only_cached and args.cache is None:
        parser.error("--only-cached needs --cache")
    return args


def make_case(
    args: argparse.Namespace, config: str, attack: str, rule: str, seed: int,
    trust: bool = False,
) -> RobustCase:  # fmt: skip
    workers, attackers = CONFIGS[config]
    return RobustCase(
        name=f"{config}-{attack}-{rule}{'-trust' if trust else ''}",
        rule=rule,
        attack=attack,
        workers=workers,
        attackers=attackers if attack != "none" else 0,
        seed=seed,
        rounds=args.rounds,
        inner_steps=args.inner_steps,
        eval_batches=args.eval_batches,
        trust=trust,
    )


def plan(args: argparse.Namespace) -> list[RobustCase]:
    """Every run, most wanted first (a run cut short still has the headlines).

    1. seed 0, per config: the no-attack mean and default rule (and its
       trust run), then each headline attack's row of rules followed by its
       trust run; 2. seed 0: the other attacks' rows (each followed by its
       trust run) and the other rules with no attack; 3. seeds 1.. of the
       baseline, the default rule with no attack and the headline rows.
    """
    rules, attacks = args.rules, args.attacks
    default = list(dict.fromkeys(("mean", args.default_rule)))
    headline = [a for a in attacks if a in HEADLINE]
    others = [a for a in attacks if a not in HEADLINE]

    def row(config: str, attack: str) -> list[RobustCase]:
        cases = [make_case(args, config, attack, r, 0) for r in rules]
        if not args.no_trust:
            cases.append(make_case(args, config, attack, args.default_rule, 0, True))
        return cases

    order: list[RobustCase] = []
    for config in args.configs:
        order += [make_case(args, config, "none", r, 0) for r in default]
        if not args.no_trust:
            order.append(make_case(args, config, "none", args.default_rule, 0, True))
        for attack in headline:
            order += row(config, attack)
    for config in args.configs:
        for attack in others:
            order += row(config, attack)
        order += [make_case(args, config, "none", r, 0) for r in rules]
    for seed in range(1, args.seeds):
        for config in args.configs:
            order += [make_case(args, config, "none", r, seed) for r in default]
            order += [
                make_case(args, config, a, r, seed) for a in headline for r in rules
            ]
    unique: dict[RobustCase, None] = dict.fromkeys(order)
    return list(unique)


def results(
    args: argparse.Namespace, cases: list[RobustCase]
) -> tuple[dict[RobustCase, Any], list[str]]:
    """Each case's result (None when missing) and the missing runs' names."""
    if not args.only_cached:
        found = run_cases(cases, args.jobs, args.timeout, args.cache, runner=run_case)
        return dict(zip(cases, found, strict=True)), []
    got = {case: cached_result(args.cache, case) for case in cases}
    missing = [f"{c.name} seed {c.seed}" for c, r in got.items() if r is None]
    return got, missing


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    cases = plan(args)
    log("robustness", f"{len(cases)} runs: configs {args.configs}, attacks "
        f"{args.attacks}, rules {args.rules}, {args.seeds} seeds")  # fmt: skip
    found, missing = results(args, cases)
    grid = report_grid(args, found, CONFIGS, HEADLINE)
    report: dict[str, Any] = {
        "bench": "robustness",
        "configs": {
            c: {"workers": CONFIGS[c][0], "attackers": CONFIGS[c][1]}
            for c in args.configs
        },
        "rounds": args.rounds,
        "h": args.inner_steps,
        "seeds_headline": args.seeds,
        "default_rule": args.default_rule,
        "quick": args.quick,
        **grid,
        "trust": None if args.no_trust else report_trust(args, found),
        "share": None if args.no_share else share_of_round(args),
        "missing_runs": missing,
        "wall_seconds": time.perf_counter() - started,
        "machine": {"cpus": os.cpu_count(), "threads_per_run": 1, "jobs": args.jobs},
    }
    report["goals"] = goals(report, args)
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
