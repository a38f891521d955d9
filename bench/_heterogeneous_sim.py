"""One `fedgrpc simulate` run for bench/heterogeneous.py: a round mode, a crash rate.

Not a benchmark itself. Each run is the real simulator as a user starts
it, a subprocess `fedgrpc simulate --json` (coordinator thread, four
client processes, loopback gRPC, signed updates), so a case measures the
code a deployment runs, compression, signing and exactly-once counting
included. A subprocess rather than `run_simulation` in this process: the
bench pool's children are daemonic and may not start the simulator's
client processes themselves.

What a run keeps is what the bench compares: the global model's
validation loss per evaluated version with `elapsed_s` (seconds since the
start gate) and `tokens` (all clients' tokens by then, wasted ones
included; `fedgrpc.sim.timeline`), the simulator's goodput, and the
per-client pace.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FEDGRPC = Path(sys.executable).with_name("fedgrpc")
RUN_TIMEOUT_S = 900.0
"""Bound on one simulation (a healthy full-size run takes ~40-90 s)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModeCase:
    """One (round mode, crash rate, seed) run; picklable, its repr is the cache key."""

    name: str
    mode: str
    """`--round-mode`: sync, deadline or buffered_async."""
    crash_rate: float
    seed: int
    rounds: int
    """`--rounds` (max_rounds: what ends the run), chosen per mode so every
    mode's run takes a similar wall time."""
    inner_steps: int
    speeds: str = "1,1,2,4"
    corpus_bytes: int = 1_000_000
    round_duration_s: float | None = None
    """deadline: training seconds per round."""
    buffer_size: int | None = None
    """buffered_async: K, the updates that close a round."""
    max_staleness: int | None = None
    staleness_exponent: float | None = None
    max_restarts: int | None = None
    """`--max-restarts` (None: the simulator's 10)."""
    fragments: int | None = field(default=None, repr=False)
    """streaming: P. Kept out of the repr (the cache key), so the other
    modes' cached runs stay valid: a streaming case's `name` carries it."""
    overlap_steps: int | None = field(default=None, repr=False)
    """streaming: tau, `--streaming-overlap-steps` (in `name` too)."""
    crash_per_sync: float | None = field(default=None, repr=False)
    """`--crash-rate` when a sync point is not a round of H steps
    (streaming syncs every H/P steps): the rate per sync point that gives
    `crash_rate` per H steps (in `name` too). None: `crash_rate`."""

    @property
    def clients(self) -> int:
        """One client per `speeds` factor."""
        return len(self.speeds.split(","))

    def flags(self) -> list[str]:
        """The `fedgrpc simulate` command line of this run (without the program)."""
        argv = [
            "simulate", "--json", "--no-progress",
            "--clients", str(self.clients), "--speeds", self.speeds,
            "--rounds", str(self.rounds), "--inner-steps", str(self.inner_steps),
            "--corpus-bytes", str(self.corpus_bytes), "--seed", str(self.seed),
            "--crash-rate", str(self.crash_per_sync if self.crash_per_sync
                                else self.crash_rate),
            "--round-mode", self.mode,
        ]  # fmt: skip
        optional = {
            "--round-duration-s": self.round_duration_s,
            "--buffer-size": self.buffer_size,
            "--max-staleness": self.max_staleness,
            "--staleness-exponent": self.staleness_exponent,
            "--max-restarts": self.max_restarts,
            "--fragments": self.fragments,
            "--streaming-overlap-steps": self.overlap_steps,
        }
        for flag, value in optional.items():
            if value is not None:
                argv += [flag, str(value)]
        return argv


def run_case(case: ModeCase, log: Any) -> dict[str, Any]:
    """Run `case` once; the figures bench/heterogeneous.py aggregates.

    Raises:
        RuntimeError: the simulation failed (its stderr's tail attached).
    """
    started = time.perf_counter()
    result = subprocess.run(
        [str(FEDGRPC), *case.flags()],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(
            f"{case.name} seed {case.seed} failed ({result.returncode}):\n"
            f"{result.stderr[-3000:]}"
        )
    summary = json.loads(result.stdout)
    evaluations = [
        {k: e[k] for k in ("model_version", "val_loss", "elapsed_s", "tokens")}
        for e in summary["evaluations"]
    ]
    log(
        f"{case.name} seed {case.seed}: val {summary['final_val_loss']:.4f}, "
        f"goodput {summary['goodput']:.1%}, train {summary['train_wall_s']:.1f} s"
    )
    return {
        "name": case.name,
        "mode": case.mode,
        "crash_rate": case.crash_rate,
        "seed": case.seed,
        "flags": case.flags(),
        "final_val_loss": summary["final_val_loss"],
        "goodput": summary["goodput"],
        "train_wall_s": summary["train_wall_s"],
        "wall_s": summary["wall_s"],
        "tokens": summary["tokens"],
        "crashes": summary["crashes"],
        "rounds_applied": summary["rounds_applied"],
        "bytes_up": summary["bytes_up"],
        "updates": sum(summary["updates_per_round"]),
        "num_parameters": summary["num_parameters"],
        "evaluations": evaluations,
        "participants": [
            {
                k: p[k]
                for k in (
                    "speed",
                    "crashes",
                    "goodput",
                    "busy_fraction",
                    "tokens",
                    "updates_applied",
                )
            }
            for p in summary["participants"]
        ],
        "seconds": time.perf_counter() - started,
    }
