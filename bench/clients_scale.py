"""One coordinator, many connected clients: join time, round time, RSS, CPU.

One run starts `fedgrpc serve` (open enrollment, --min-clients N, a tiny
dense fp32 model) and --processes spawned children that each run N/P light
clients as asyncio tasks on one grpc.aio channel (bench/_scale_clients.py).
Every client does the real protocol: challenge + signed Join, a Session
stream with heartbeats, one signed update for round 1, then waits for
RoundClosed. Once every session is open, one client seeds the model, which
starts round 1.

Measured: join time (first Join sent to last JoinResponse), round wall time
(first RoundStarted received to last RoundClosed received, as the clients
saw it, and the coordinator's own round duration from AdminService), the
coordinator's peak RSS (VmHWM) and CPU seconds (utime + stime) over the
run, and how many clients completed the round (pushed, then heard it
closed APPLIED with all N updates).

The default (1,000 clients) is what `make bench` runs. `--clients 2000`
(about 10 s on 2 cores) is the scale check for issue 6: the clients'
Sessions reach the coordinator in a burst, more than grpc core's default
backlog of 1,000 not-yet-accepted calls, which the coordinator raises with
its `max_clients` (see `coordinator.server.server_options`).

Prints one JSON object on stdout; progress goes to stderr. MB is 10^6 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from _scale_clients import clients_main
from _util import (
    CTX,
    MB,
    collect_reports,
    log,
    log_tail,
    proc_status_bytes,
    rounded,
    start_coordinator,
    stop_all,
)

from fedgrpc._proto.v1 import admin_pb2, admin_pb2_grpc, coordinator_pb2
from fedgrpc.client.admin import fetch_status

COORDS = 64
"""Model coordinates (one float32 tensor): the bench is about clients, not bytes."""
SERVE_FLAGS = ("--open-enrollment", "--inner-steps", "1", "--outer-optimizer", "fedavg",
               "--round-timeout-s", "600", "--heartbeat-interval-s", "5",
               "--session-timeout-s", "600", "--log-level", "WARNING")  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def admin_status(address: str) -> admin_pb2.GetStatusResponse:
    with grpc.insecure_channel(address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=30)


def wait_connected(address: str, clients: int, deadline: float, out: Any) -> None:
    """Until the coordinator counts `clients` connected sessions (bounded).

    Children report only failures on `out` meanwhile: a refused Session
    is raised at once, not found as a count short of `clients` at the deadline.
    """
    while True:
        try:
            failed = out.get_nowait()
        except queue.Empty:
            failed = None
        if failed is not None:
            raise RuntimeError(f"child failed:\n{failed.get('error', failed)}")
        # Every page: GetStatus returns at most 500 clients per call.
        connected = sum(c.connected for c in fetch_status(address, None, 30).clients)
        if connected >= clients:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{connected}/{clients} sessions open at the deadline")
        time.sleep(0.2)


def run(clients: int, processes: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    procs: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="fedgrpc-bench-") as tmp:
        try:
            flags = ("--min-clients", str(clients),
                     "--max-clients", str(clients + 16), *SERVE_FLAGS)  # fmt: skip
            coord, address = start_coordinator(Path(tmp), *flags)
            procs.append(coord)
            baseline_rss = proc_status_bytes(coord.pid, "VmRSS")
            baseline_cpu = cpu_seconds(coord.pid)
            go, out = CTX.Event(), CTX.Queue()
            names = [f"c{i:05d}" for i in range(clients)]
            for p in range(processes):
                share = names[p::processes]
                job = (address, share, COORDS, p == 0, go, out)
                procs.append(CTX.Process(target=clients_main, args=job))
            started = time.time()
            for proc in procs[1:]:
                proc.start()
            collect_reports(out, procs, deadline - time.monotonic())
            wait_connected(address, clients, deadline, out)
            connected_at = time.time()
            log("clients_scale", f"{clients} sessions open; seeding")
            go.set()
            reports = collect_reports(out, procs, deadline - time.monotonic())
            peak_rss = proc_status_bytes(coord.pid, "VmHWM")
            cpu = cpu_seconds(coord.pid)
            status = admin_status(address)
        except BaseException:
            log("clients_scale", "coordinator log:\n" + log_tail(Path(tmp)))
            raise
        finally:
            stop_all(procs)
    seen = [c for r in reports for c in r["clients"]]
    applied = coordinator_pb2.ROUND_OUTCOME_APPLIED
    done = [
        c
        for c in seen
        if c["closed"] is not None
        and c["pushed"] is not None
        and c["outcome"] == applied
        and c["num_updates"] == clients
    ]
    rounds = [r for r in status.recent_rounds if r.outcome == applied]
    return {
        "clients": clients,
        "processes": processes,
        "coordinates": COORDS,
        "clients_completed_round": len(done),
        "spawn_to_all_connected_s": connected_at - started,
        "join_s": max(c["join_done"] for c in seen)
        - min(c["join_started"] for c in seen),
        "round_wall_s": max(c["closed"] for c in done) - min(c["started"] for c in done)
        if done
        else None,
        "coordinator_round_s": rounds[-1].duration_s if rounds else None,
        "coordinator_peak_rss_mb": peak_rss / MB,
        "coordinator_baseline_rss_mb": baseline_rss / MB,
        "coordinator_cpu_s": cpu - baseline_cpu,
        "coordinator_cpu_s_total": cpu,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    clients_help = "connected clients (2000: the issue 6 scale check)"
    parser.add_argument("--clients", type=int, default=1000, help=clients_help)
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--timeout", type=float, default=300, help="whole run, s")
    parser.add_argument("--quick", action="store_true", help="100 clients smoke")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.timeout = 100, 120
    if args.clients < 1 or not 1 <= args.processes <= args.clients:
        parser.error("need 1 <= --processes <= --clients")
    return args


def main() -> None:
    args = parse_args()
    log("clients_scale", f"{args.clients} clients in {args.processes} processes")
    result = run(args.clients, args.processes, args.timeout)
    report = {
        "bench": "clients_scale",
        **rounded(result),
        "goals": {
            "clients_completed_round": result["clients_completed_round"] == args.clients
        },
        "machine": {"cpus": os.cpu_count()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
