"""Shared plumbing for bench/*.py: processes, /proc, `fedgrpc serve`.

Not a benchmark itself. Benches import it as `_util` (their own directory is
on sys.path when run as `python bench/<name>.py`, and spawn children inherit
that path). Nothing here imports torch, so spawned helpers start fast.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MB = 1e6
"""Benches report MB = 10^6 bytes."""
READY_TIMEOUT_S = 60.0
CTX = mp.get_context("spawn")
"""Messages of DEFAULT_CHUNK_BYTES per raw stream (~420 MB)."""


def log(bench: str, msg: str) -> None:
    """Progress line on stderr (stdout is reserved for the JSON report)."""
    print(f"[{bench}] {msg}", file=sys.stderr, flush=True)


def proc_status_bytes(pid: int, key: str) -> int:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(f"{key} not in /proc/{pid}/status")


def start_coordinator(
    workdir: Path, *flags: str
) -> tuple[subprocess.Popen[bytes], str]:
    """`fedgrpc serve` on 127.0.0.1:0 with `flags`; returns (process, address).

    stderr goes to `workdir/coordinator.log`, whose tail is raised if the
    ready file does not appear within READY_TIMEOUT_S.
    """
    ready, log_path = workdir / "ready", workdir / "coordinator.log"
    argv = [
        str(Path(sys.executable).with_name("fedgrpc")),
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--ready-file",
        str(ready),
        # The bench clients bring the model; the first to join seeds it.
        # A leaf (--upstream) serves its root's model and seeds nothing.
        *(
            ()
            if {"--init-model", "--upstream"} & set(flags)
            else ("--seed-from-first-client",)
        ),
        *flags,
    ]
    with log_path.open("wb") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_all([proc])
            tail = log_tail(workdir)
            raise RuntimeError(f"coordinator did not become ready:\n{tail}")
        time.sleep(0.05)
    return proc, ready.read_text().strip()


def log_tail(workdir: Path, chars: int = 3000) -> str:
    """The end of the coordinator's stderr in `workdir` ('' if there is none)."""
    path = workdir / "coordinator.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def collect_reports(out: Any, procs: list[Any], timeout_s: float) -> list[Any]:
    """One report per `mp.Process` in `procs` from queue `out`, within `timeout_s`.

    A report with an "error" key (a child's traceback) is raised, and so is
    a non-zero exit of any process in `procs` (Popen or mp.Process).
    """
    deadline = time.monotonic() + timeout_s
    expected = sum(isinstance(p, mp.process.BaseProcess) for p in procs)
    reports: list[Any] = []
    while len(reports) < expected:
        try:
            report = out.get(timeout=1.0)
        except queue.Empty:
            report = None
        if report is not None and "error" in report:
            raise RuntimeError(f"child failed:\n{report['error']}")
        if report is not None:
            reports.append(report)
        elif any(exit_code(p) for p in procs):
            raise RuntimeError("a child process failed before reporting")
        elif time.monotonic() > deadline:
            raise TimeoutError(f"children did not report within {timeout_s:.0f} s")
    return reports


def exit_code(proc: Any) -> int | None:
    """Exit status of a Popen or mp.Process; None while it runs."""
    return proc.poll() if isinstance(proc, subprocess.Popen) else proc.exitcode


def stop_all(procs: list[Any]) -> None:
    """Terminate, wait (bounded), then kill: `Popen` and `mp.Process` alike."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        if isinstance(proc, subprocess.Popen):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        else:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)


def parse_size(text: str) -> int:
    """'10.5M' -> 10_500_000 parameters."""
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(text[-1].upper(), 1.0)
    return int(float(text.rstrip("KkMmGg")) * scale)


def rounded(value: Any) -> Any:
    """Floats to 4 significant digits, recursively, for a readable report."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value
