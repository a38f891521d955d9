"""Each evaluation's place on the time and token axes: loss-vs-time, loss-vs-tokens.

Comparing round modes needs the global model's validation loss as a
function of wall time and of work done, not of round number: a
`buffered_async` round is not a `sync` round. Two kinds of worker message
carry what that takes, both stamped with wall-clock `time.time()` (one
clock for every process on the machine):

* the reporter's `eval` (`worker._reporting`): `at`, when client 0 loaded
  that global version;
* every client's `mark` (`ComputeLedger.mark`): the tokens it processed
  since its previous mark, at each sync point it reached (before pushing),
  at a crash and at its end.

`stamp_evaluations` turns `at` into `elapsed_s` (seconds since the start
gate, when every client had joined and training began) and adds `tokens`:
every client's marked tokens up to that moment, wasted ones (refused,
too stale, crashed) included. A client's steps since its last sync point
are not counted yet: tokens step at sync points, as the evaluations do.
"""

from __future__ import annotations

import numpy as np


def stamp_evaluations(
    evaluations: list[dict[str, float]],
    marks: list[dict[str, float]],
    gate_at: float,
) -> list[dict[str, float]]:
    """`evaluations` with `at` replaced by `elapsed_s` and `tokens` (see module).

    An evaluation before the start gate (the initial weights, scored at
    Join) is at 0 s and 0 tokens. Without `at` (none was sent) an
    evaluation is returned as it was.
    """
    if not evaluations or any("at" not in e for e in evaluations):
        return [dict(e) for e in evaluations]
    times = np.array([m["at"] for m in marks], dtype=np.float64)
    order = np.argsort(times, kind="stable")
    deltas = np.array([m["tokens"] for m in marks], dtype=np.float64)[order]
    counted = np.concatenate(([0.0], np.cumsum(deltas)))  # counted[k]: first k marks
    at = np.array([e["at"] for e in evaluations], dtype=np.float64)
    tokens = counted[np.searchsorted(times[order], at, side="right")]
    tokens[at < gate_at] = 0.0
    elapsed = np.maximum(0.0, at - gate_at)
    return [
        {k: v for k, v in e.items() if k != "at"}
        | {"elapsed_s": float(s), "tokens": float(t)}
        for e, s, t in zip(evaluations, elapsed, tokens, strict=True)
    ]
