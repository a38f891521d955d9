"""What open dashboards cost the coordinator: round time and CPU, with and without.

One run, one coordinator (`fedgrpc serve --http-listen`), N client processes
on round_latency.py's dense fp32 case (H = 1, a 10.5M-parameter MLP by
default). After a warm-up round the rounds come in blocks of `--rounds`;
odd blocks run with `--viewers` dashboards open, even blocks with none, so
drift in the machine's load hits both sides alike. A dashboard here is what
a browser tab does: it loads `/` and `/dashboard.js` once, then holds one
`/api/v1/events` stream and reads every event (the DOM work happens in the
browser, not the coordinator, so no browser runs here). The controller
follows rounds by tailing the coordinator's log (`round_closed`), so it adds
no load of its own; the coordinator's CPU is read from /proc/PID/stat at
every block boundary, round times from GetStatus (`/api/v1/status`) at the
end. Goal (issue 17): median round time with dashboards within 5 % of none.

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch
from _util import (
    CTX,
    MB,
    collect_reports,
    log,
    log_tail,
    parse_size,
    rounded,
    start_coordinator,
    stop_all,
)
from round_latency import FP32_BYTES, client_main, mlp_shape

SERVE_FLAGS = ("--inner-steps", "1", "--log-format", "json", "--log-level", "INFO",
               "--open-enrollment", "--http-listen", "127.0.0.1:0",
               "--admin-access", "loopback", "--http-max-event-streams", "32",
               "--http-max-connections", "48")  # fmt: skip
"""INFO: the controller reads `dashboard_serving` and `round_closed` lines."""


class Viewer:
    """One dashboard tab: page and script once, then an event stream, read."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.events = 0
        self.opened = threading.Event()
        """Set at the stream's first event (the snapshot sent on connect)."""
        self.stop = threading.Event()
        self.error: str = ""
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _get(self, path: str) -> None:
        url = f"http://{self.address[0]}:{self.address[1]}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()

    def _run(self) -> None:
        try:
            self._get("/")
            self._get("/dashboard.js")
            with socket.create_connection(self.address, timeout=1) as s:
                s.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                while not self.stop.is_set():
                    try:
                        data = s.recv(1 << 16)
                    except TimeoutError:
                        continue
                    if not data:
                        self.error = "the server closed the event stream"
                        return
                    self.events += data.count(b"event: status")
                    if self.events:
                        self.opened.set()
        except OSError as exc:
            self.error = repr(exc)


class Controller:
    """Opens and closes the viewers at block boundaries; notes the CPU there."""

    def __init__(self, workdir: Path, pid: int, args: argparse.Namespace) -> None:
        self.log_path = workdir / "coordinator.log"
        self.pid, self.args = pid, args
        self.viewers: list[Viewer] = []
        self.closed_viewers: list[Viewer] = []
        self.cpu_at: dict[int, float] = {}
        """Coordinator CPU seconds when round N had just closed."""
        self.http: tuple[str, int] | None = None
        self.done = threading.Event()
        self.error: str = ""
        self.thread = threading.Thread(target=self._run, daemon=True)

    def viewers_in_block(self, block: int) -> bool:
        return block % 2 == 1

    def _cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _lines(self) -> Any:
        with self.log_path.open() as f:
            while not self.done.is_set():
                line = f.readline()
                if not line:
                    time.sleep(0.01)
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue

    def _run(self) -> None:
        try:
            self._follow()
        except Exception as exc:  # surfaced by main
            self.error = repr(exc)

    def _follow(self) -> None:
        r = self.args.rounds
        last_round = 1 + r * self.args.blocks
        for event in self._lines():
            if event.get("event") == "dashboard_serving":
                host, port = (
                    event["url"].removeprefix("http://").rstrip("/").rsplit(":", 1)
                )
                self.http = (host, int(port))
            if event.get("event") != "round_closed":
                continue
            closed = int(event["round"])
            if closed >= 1 and (closed - 1) % r == 0:  # a block boundary
                self.cpu_at[closed] = self._cpu_s()
                self._switch(block=(closed - 1) // r)
            if closed >= last_round:
                self._switch(block=0)
                return

    def _switch(self, block: int) -> None:
        """Viewers open for `block` if it is a dashboards block, else none."""
        assert self.http is not None, "dashboard_serving not logged"
        want = self.viewers_in_block(block)
        if want and not self.viewers:
            self.viewers = [Viewer(*self.http) for _ in range(self.args.viewers)]
            for v in self.viewers:
                v.thread.start()
            # Quick blocks are a few short rounds: on a loaded machine the tabs
            # could still be loading when the block ends. Wait (bounded) until
            # every stream is open, so the block is measured with them open.
            deadline = time.monotonic() + 30
            for v in self.viewers:
                v.opened.wait(timeout=max(0.0, deadline - time.monotonic()))
        elif not want and self.viewers:
            for v in self.viewers:
                v.stop.set()
            for v in self.viewers:
                v.thread.join(timeout=5)
            self.closed_viewers += self.viewers
            self.viewers = []


def round_durations(http: tuple[str, int]) -> dict[int, float]:
    url = f"http://{http[0]}:{http[1]}/api/v1/status"
    with urllib.request.urlopen(url, timeout=10) as response:
        status = json.loads(response.read())
    return {
        int(r["round_id"]): float(r["duration_s"])
        for r in status["recent_rounds"]
        if r["outcome"] == "ROUND_OUTCOME_APPLIED"
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    shape = mlp_shape(parse_size(args.size))
    total = 1 + args.rounds * args.blocks
    procs: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="fedgrpc-bench-") as tmp:
        try:
            coord, address = start_coordinator(
                Path(tmp), "--min-clients", str(args.clients), *SERVE_FLAGS
            )
            procs.append(coord)
            control = Controller(Path(tmp), coord.pid, args)
            control.thread.start()
            sync = (CTX.Barrier(args.clients), CTX.Queue())
            job = (address, shape, total, sync)
            procs += [
                CTX.Process(target=client_main, args=job) for _ in range(args.clients)
            ]
            for proc in procs[1:]:
                proc.start()
            model_mb = FP32_BYTES * shape[1] * (shape[0] ** 2 + shape[0]) / MB
            collect_reports(
                sync[-1], procs, 120 + total * (10 + args.clients * model_mb / 40)
            )
            control.thread.join(timeout=30)
            control.done.set()
            if control.error:
                raise RuntimeError(control.error)
            assert control.http is not None
            durations = round_durations(control.http)
        except BaseException:
            log("dashboard", "coordinator log:\n" + log_tail(Path(tmp)))
            raise
        finally:
            stop_all(procs)
    return summarize(args, control, durations)


def summarize(
    args: argparse.Namespace, control: Controller, durations: dict[int, float]
) -> dict[str, Any]:
    """Median round time and CPU per round, with dashboards and without."""
    sides: dict[str, dict[str, list[float]]] = {
        "none": {"round_s": [], "cpu_s": []},
        "dashboards": {"round_s": [], "cpu_s": []},
    }
    r = args.rounds
    for block in range(args.blocks):
        first, last = 2 + block * r, 1 + (block + 1) * r  # rounds of this block
        side = sides["dashboards" if control.viewers_in_block(block) else "none"]
        side["round_s"] += [durations[n] for n in range(first, last + 1)]
        cpu = control.cpu_at[last] - control.cpu_at[first - 1]
        side["cpu_s"].append(cpu / r)
    report: dict[str, dict[str, Any]] = {
        side: {
            "round_s_median": statistics.median(v["round_s"]),
            "round_s_all": v["round_s"],
            "coordinator_cpu_s_per_round": statistics.mean(v["cpu_s"]),
        }
        for side, v in sides.items()
    }
    ratio = report["dashboards"]["round_s_median"] / report["none"]["round_s_median"]
    cpu_ratio = (
        report["dashboards"]["coordinator_cpu_s_per_round"]
        / report["none"]["coordinator_cpu_s_per_round"]
    )
    width, depth = mlp_shape(parse_size(args.size))
    events = [v.events for v in control.closed_viewers]
    errors = [v.error for v in control.closed_viewers if v.error]
    return {
        "bench": "dashboard",
        "size": args.size,
        "params": depth * (width * width + width),
        "clients": args.clients,
        "viewers": args.viewers,
        "rounds_per_block": r,
        "blocks": args.blocks,
        **report,
        "round_time_ratio": ratio,
        "cpu_per_round_ratio": cpu_ratio,
        "viewer_events_min": min(events) if events else 0,
        "viewer_errors": errors,
        "goals": {"round_time_within_5%": ratio <= 1.05},
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="10.5M", help="parameter count")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per block")
    parser.add_argument(
        "--blocks", type=int, default=4, help="blocks, none / dashboards in turn"
    )
    parser.add_argument("--viewers", type=int, default=10, help="open dashboards")
    parser.add_argument("--quick", action="store_true", help="1M, 2 blocks of 2")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.rounds, args.blocks = "1M", 2, 2
    if args.rounds < 1 or args.blocks < 2 or args.blocks % 2:
        parser.error("--rounds >= 1 and an even --blocks >= 2")
    return args


def main() -> None:
    args = parse_args()
    report = measure(args)
    log("dashboard", json.dumps(rounded(report)))
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
