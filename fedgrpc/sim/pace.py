"""`--speeds` and goodput on the client side: slow a worker down, time its work.

A client with slowdown factor f must take f times as long per inner step
as it would at full speed, on whatever machine runs the simulation. The
worker times each step's compute t (forward, backward, optimizer) and then
sleeps (f - 1)·t, so the step costs f·t of wall time and the ratio holds
however fast the machine or however loaded its cores. Sleeping, not
spinning, leaves the core to the other clients: the simulated device is
slow, it does not steal compute from its peers.

`ComputeLedger` keeps what goodput needs. Compute time is the inner steps'
wall time including the slowdown sleep (what the slow device spends),
excluding sync points (pushing, waiting for the round, pulling). Each sync
point's compute since the previous one is *useful* if the round applied
this client's update (`last_round_outcome == "applied"`), otherwise
wasted; the compute of a round a crash cut short is wasted too.

    goodput = Σ useful compute / Σ compute        (per client and in total)
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(slots=True)
class ComputeLedger:
    """One worker process's compute time, split by what became of it."""

    speed: float = 1.0
    """Slowdown factor f (>= 1)."""
    compute_s: float = 0.0
    """All inner steps' wall time, slowdown sleep included."""
    useful_s: float = 0.0
    """The part that went into applied updates."""
    round_s: float = 0.0
    """Compute since the last sync point (its fate is not known yet)."""
    steps: int = 0
    samples: int = 0
    tokens: int = 0
    """Predicted targets (char-LM: bytes; digits: one label per image)."""
    marked_tokens: int = 0
    """`tokens` at the last `mark`: what the launcher already heard of."""

    def timed_step(self, started: float, samples: int, tokens: int) -> None:
        """Close the inner step that began at `started` (`time.perf_counter`).

        Sleeps (f - 1)·t first, t being the step's measured compute, so the
        step's wall time is f·t.
        """
        compute = time.perf_counter() - started
        if self.speed > 1:
            time.sleep((self.speed - 1) * compute)
        elapsed = time.perf_counter() - started
        self.compute_s += elapsed
        self.round_s += elapsed
        self.steps += 1
        self.samples += samples
        self.tokens += tokens

    def settle(self, outcome: str | None) -> None:
        """A sync point ended: this round's compute was useful iff it applied.

        A streaming fragment still in flight ("in_flight") settles at its
        merge, a few steps later, with the round's outcome.
        """
        if outcome == "in_flight":
            return
        if outcome == "applied":
            self.useful_s += self.round_s
        self.round_s = 0.0

    def mark(self, at: float) -> dict[str, float]:
        """A token mark: the tokens processed since the last mark, stamped `at`.

        `at` is wall-clock `time.time()` (the launcher's start gate and the
        reporter's evaluations use the same clock, comparable across
        processes), taken when the client *reached* the sync point, before
        pushing, so a round's tokens count from before it closed. The
        launcher sums every client's marks up to an evaluation's time
        (`fedgrpc.sim.timeline`); deltas, not totals, so a restarted
        process (whose ledger starts at 0) adds to what its predecessor
        marked instead of replacing it.
        """
        delta = self.tokens - self.marked_tokens
        self.marked_tokens = self.tokens
        return {"at": at, "tokens": float(delta)}

    def figures(self) -> dict[str, float]:
        """What the worker reports to the launcher (summed over restarts there).

        Compute of a round still open (a crash) is in `compute_s`, never in
        `useful_s`: wasted.
        """
        return {
            "compute_s": self.compute_s,
            "useful_s": self.useful_s,
            "steps": float(self.steps),
            "samples": float(self.samples),
            "tokens": float(self.tokens),
        }


ADDITIVE = ("compute_s", "useful_s", "steps", "samples", "tokens", "bytes_sent",
            "bytes_received")  # fmt: skip
"""Figures a restarted client's incarnations each count part of: summed."""


def merge_incarnations(
    crashed: list[dict[str, float]], done: dict[str, float]
) -> dict[str, float]:
    """One client's figures over all its processes (`crashed`, then `done`).

    Counts (`ADDITIVE`, `outcome_*`) add up; `initial_*` (the reporter's
    score of the initial weights) is the first process's, since a restarted
    reporter's "initial" model is the global one it re-joined to; the rest
    (final metrics, split size) is the last process's.
    """
    merged = dict(done)
    for figures in crashed:
        for name, value in figures.items():
            if name in ADDITIVE or name.startswith("outcome_"):
                merged[name] = merged.get(name, 0.0) + value
    first = crashed[0] if crashed else done
    merged |= {k: v for k, v in first.items() if k.startswith("initial_")}
    merged.pop("attempt", None)
    return merged
