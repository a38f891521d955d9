"""Differential privacy benchmark: utility vs ε (issue 14).

Prints one JSON object on stdout (progress on stderr). Sections, each a
function of (quick, epsilons, progress) returning a dict:

- `record_level` (bench/_privacy_record.py): DP-SGD inside 4 silos through
  `fedgrpc.privacy.RecordDP` (Opacus, our ledger), on scikit-learn's digits
  and on the simulate char-LM, at ε in {1, 3, 8} (δ = 1e-5) against the
  same federation without DP. Goals: ε = 8 within 3 accuracy points of
  non-private on digits; ε <= 1 reached and its accuracy reported.

- `client_level` (bench/_privacy_client_level.py): DP-FedAvg over 100
  simulated clients (digits shards, logistic regression, every client in
  every round), central noise vs distributed discrete Gaussian shares
  under secure aggregation at the same ε in {1, 8}, 5 seeds, with the
  library's own mechanisms. Goal: distributed within 1 % of central loss.
  The noise stage's share of a real round is `bench/central_dp.py`'s and
  `bench/distributed_dp.py`'s figure.

    .venv/bin/python bench/privacy.py            # ~minutes on one core
    .venv/bin/python bench/privacy.py --quick    # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from _privacy_client_level import client_level
from _privacy_record import record_level
from _util import log

Section = Callable[[bool, list[float], Callable[[str], None]], dict[str, Any]]
SECTIONS: dict[str, Section] = {
    "record_level": record_level,
    "client_level": client_level,
}
"""Every section the bench can run, by name (`--sections`)."""


def main() -> None:
    """Run the chosen sections; print their report as one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of {', '.join(SECTIONS)}")  # fmt: skip
    parser.add_argument("--epsilons", default="1,3,8",
                        help="targets ε at δ = 1e-5 (comma-separated)")  # fmt: skip
    args = parser.parse_args()
    names = [n for n in args.sections.split(",") if n]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {sorted(SECTIONS)}")
    epsilons = [float(e) for e in args.epsilons.split(",") if e]
    torch.set_num_threads(1)  # the numbers are per core; the machine is shared
    report: dict[str, Any] = {"bench": "privacy", "quick": args.quick}
    for name in names:
        start = time.perf_counter()

        def progress(message: str, name: str = name) -> None:
            log("privacy", f"{name}: {message}")

        report[name] = SECTIONS[name](args.quick, epsilons, progress)
        report[name]["seconds"] = round(time.perf_counter() - start, 1)
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
