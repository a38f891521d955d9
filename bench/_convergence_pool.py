"""Run bench/convergence.py's cases in-process or in N spawned processes.

Not a benchmark itself. Each case is independent and single-threaded, so
with two cores two processes halve the wall time. Waits are bounded: one
deadline for the whole batch; a child that fails (traceback on the queue,
or a non-zero exit) stops everything and is raised.
"""

from __future__ import annotations

import queue
import time
import traceback
from typing import Any

from _convergence_sim import Case, run_case
from _util import CTX, log, stop_all


def _progress(msg: str) -> None:
    log("convergence", msg)


def _child(index: int, case: Case, out: Any) -> None:
    try:
        out.put(("done", index, run_case(case, _progress)))
    except BaseException:  # the parent must hear about every failure
        out.put(("error", index, traceback.format_exc()))
        raise


def run_cases(cases: list[Case], jobs: int, timeout_s: float) -> list[dict[str, Any]]:
    """Results in the order of `cases`; `jobs` == 1 runs them in this process."""
    if jobs <= 1:
        return [_run_logged(case) for case in cases]
    return _run_spawned(cases, jobs, timeout_s)


def _run_logged(case: Case) -> dict[str, Any]:
    result = run_case(case, _progress)
    _report_done(result)
    return result


def _report_done(result: dict[str, Any]) -> None:
    _progress(
        f"done {result['name']} seed {result['seed']}: "
        f"val {result['final_val_loss']}, {result['seconds']:.0f} s"
    )


def _run_spawned(
    cases: list[Case], jobs: int, timeout_s: float
) -> list[dict[str, Any]]:
    out = CTX.Queue()
    pending = list(enumerate(cases))
    running: dict[int, Any] = {}
    results: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while pending or running:
            while pending and len(running) < jobs:
                index, case = pending.pop(0)
                proc = CTX.Process(target=_child, args=(index, case, out), daemon=True)
                proc.start()
                running[index] = proc
            index, result = _next_result(out, running, deadline)
            running.pop(index).join(timeout=30)
            results[index] = result
            _report_done(result)
    finally:
        stop_all(list(running.values()))
    return [results[i] for i in range(len(cases))]


def _next_result(
    out: Any, running: dict[int, Any], deadline: float
) -> tuple[int, dict[str, Any]]:
    """The next ("done", index, result) from `out`, or raise."""
    while True:
        try:
            status, index, payload = out.get(timeout=1.0)
        except queue.Empty:
            if any(proc.exitcode for proc in running.values()):
                raise RuntimeError("a run's process died before reporting") from None
            if time.monotonic() > deadline:
                raise TimeoutError("runs did not finish within --timeout") from None
            continue
        if status == "error":
            raise RuntimeError(f"run {index} failed:\n{payload}")
        return index, payload
