"""Run bench/convergence.py's cases in-process or in N spawned processes.

Not a benchmark itself. Each case is independent and single-threaded, so
with two cores two processes halve the wall time. Waits are bounded: one
deadline for the whole batch; a child that fails (traceback on the queue,
or a non-zero exit) stops everything and is raised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import queue
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _convergence_sim import Case, run_case
from _util import CTX, log, stop_all


def _progress(msg: str) -> None:
    log("convergence", msg)


Runner = Callable[[Any, Callable[[str], None]], dict[str, Any]]
"""`run(case, log)` -> result: `_convergence_sim.run_case` or another bench's
(a module-level function, so spawned children can import it)."""


def _child(index: int, case: Case, out: Any, runner: Runner = run_case) -> None:
    try:
        out.put(("done", index, runner(case, _progress)))
    except BaseException:  # the parent must hear about every failure
        out.put(("error", index, traceback.format_exc()))
        raise


def run_cases(
    cases: list[Any],
    jobs: int,
    timeout_s: float,
    cache: Path | None = None,
    runner: Runner = run_case,
) -> list[dict[str, Any]]:
    """Results in the order of `cases`; `jobs` == 1 runs them in this process.

    With `cache`, each result is also written there as it arrives, and a
    case whose result is already there (same fields, so same seed and
    settings) is not run again: a 50-minute run interrupted at minute 40
    resumes where it stopped. Results are only as fresh as the code that
    made them; use a new directory after changing it. `runner` runs one
    case (default: `_convergence_sim.run_case`).
    """
    cached = {i: _load(cache, case) for i, case in enumerate(cases)}
    todo = [case for i, case in enumerate(cases) if cached[i] is None]
    log("convergence", f"{len(cases) - len(todo)} of {len(cases)} runs from cache")
    if jobs <= 1:
        fresh = [_store(cache, case, _run_logged(case, runner)) for case in todo]
    else:
        fresh = _run_spawned(todo, jobs, timeout_s, cache, runner)
    results = iter(fresh)
    return [cached[i] or next(results) for i in range(len(cases))]


def cached_result(cache: Path, case: Any) -> dict[str, Any] | None:
    """`case`'s result if `cache` holds it, else None; runs nothing.

    `case`: any frozen dataclass with `name` and `seed` (a convergence `Case`,
    a robustness `RobustCase`), as `run_cases` takes.
    """
    return _load(cache, case)


KEY_IF_SET = ("outer_weight_decay",)
"""Case fields added after caches were filled: left out of the key while at
their default, so every earlier result keeps its file name."""


def _cache_key(case: Case) -> str:
    text = repr(case)
    for field in dataclasses.fields(case):
        if field.name in KEY_IF_SET and getattr(case, field.name) == field.default:
            text = text.replace(f", {field.name}={field.default!r}", "")
    return text


def _cache_file(cache: Path, case: Case) -> Path:
    digest = hashlib.sha256(_cache_key(case).encode()).hexdigest()[:16]
    return cache / f"{case.name}-seed{case.seed}-{digest}.json"


def _load(cache: Path | None, case: Case) -> dict[str, Any] | None:
    if cache is None or not _cache_file(cache, case).exists():
        return None
    result: dict[str, Any] = json.loads(_cache_file(cache, case).read_text())
    return result


def _store(cache: Path | None, case: Case, result: dict[str, Any]) -> dict[str, Any]:
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        _cache_file(cache, case).write_text(json.dumps(result))
    return result


def _run_logged(case: Case, runner: Runner = run_case) -> dict[str, Any]:
    result = runner(case, _progress)
    _report_done(result)
    return result


def _report_done(result: dict[str, Any]) -> None:
    _progress(
        f"done {result['name']} seed {result['seed']}: "
        f"val {result['final_val_loss']}, {result['seconds']:.0f} s"
    )


def _run_spawned(
    cases: list[Case],
    jobs: int,
    timeout_s: float,
    cache: Path | None,
    runner: Runner = run_case,
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
                proc = CTX.Process(
                    target=_child, args=(index, case, out, runner), daemon=True
                )
                proc.start()
                running[index] = proc
            index, result = _next_result(out, running, deadline)
            running.pop(index).join(timeout=30)
            results[index] = _store(cache, cases[index], result)
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
