"""The parameter-sharding half of `bench/shards.py`: 1, 2 and 4 shards.

Not a benchmark itself (`shards.py` runs it). For each N every shard is a
`fedgrpc serve --shard I/N` process on a reserved loopback port, all with
the same `--init-model` and shared token; the 4 client processes each join
shard 0, learn the map and push range k to shard k. Per shard: CPU seconds
per round (utime + stime over the clients' whole session, divided by the
rounds), peak RSS (VmHWM) against its range's float32 bytes, and the median
round time. Goals the issue sets: CPU per round per shard <= 1/N of the
one-shard coordinator's + 10 %, peak RSS per shard <= 3x its range.

What holds the memory: `RssSampler` reads each shard's VmRSS (and its
anonymous and file-backed parts) every `SAMPLE_S` over the whole session,
so the JSON shows the process's floor at start (interpreter, torch, gRPC:
no model yet) apart from what the rounds add.
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _util import (
    CTX,
    MB,
    READY_TIMEOUT_S,
    collect_reports,
    log,
    log_tail,
    proc_status_bytes,
    start_coordinator,
    stop_all,
)

from fedgrpc.compress import Dense
from fedgrpc.compress.codec import make_codec
from fedgrpc.domain.chunks import DEFAULT_CHUNK_BYTES
from fedgrpc.domain.shards import shard_cuts

SHARD_TOKEN = "bench-shard-token-0123456789abcdef"
SAMPLE_S = 0.2
"""Seconds between two reads of a shard's /proc/<pid>/status."""
TIMELINE_POINTS = 12


class RssSampler:
    """VmRSS, RssAnon and RssFile of some processes, every SAMPLE_S, in a thread."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.samples: dict[int, list[tuple[int, int, int]]] = {p: [] for p in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._sample()  # the floor: ready, no model laid out yet
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def _sample(self) -> None:
        for pid in self.pids:
            try:
                rss, anon, file = (
                    proc_status_bytes(pid, key)
                    for key in ("VmRSS", "RssAnon", "RssFile")
                )
            except (OSError, KeyError):  # the process ended
                continue
            self.samples[pid].append((rss, anon, file))

    def summary(self, pid: int) -> dict[str, Any]:
        """MB at start, at the sampled peak (anon and file parts), and a timeline."""
        rows = self.samples[pid]
        if not rows:
            return {}
        peak = max(rows)
        step = max(1, len(rows) // TIMELINE_POINTS)
        return {
            "rss_mb_at_start": rows[0][0] / MB,
            "rss_mb_sampled_peak": peak[0] / MB,
            "anon_mb_at_peak": peak[1] / MB,
            "file_mb_at_peak": peak[2] / MB,
            "rss_mb_timeline": [r[0] / MB for r in rows[::step]],
        }


def _free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@dataclass(frozen=True)
class Harness:
    """What `shards.py` shares with this half: serve flags and its helpers."""

    serve_flags: tuple[str, ...]
    client_main: Callable[..., None]
    cpu_seconds: Callable[[int], float]
    coordinator_view: Callable[[str], dict[str, Any]]
    write_init_model: Callable[[Path, int], None]


def measure_shards(
    harness: Harness, count: int, params: int, rounds: int, clients: int, tmp: Path
) -> dict[str, Any]:
    """Run `count` shards and `clients` clients for `rounds`; per-shard figures."""
    cpu_seconds, coordinator_view = harness.cpu_seconds, harness.coordinator_view
    init = tmp / "init.safetensors"
    harness.write_init_model(init, params)
    token = tmp / "shard.token"
    token.write_text(SHARD_TOKEN + "\n")
    os.chmod(token, 0o600)
    peers = [_free_address() for _ in range(count)]
    procs: list[Any] = []
    pids: list[int] = []
    try:
        for k in range(count):
            workdir = tmp / f"shard{k}"
            workdir.mkdir()
            sharding = () if count == 1 else (
                "--shard", f"{k}/{count}", "--shard-peers", ",".join(peers),
                "--shard-token-file", str(token))  # fmt: skip
            flags = (*harness.serve_flags, "--min-clients", str(clients),
                     "--init-model", str(init), "--listen", peers[k],
                     *sharding)  # fmt: skip
            proc, _ = start_coordinator(workdir, *flags)
            procs.append(proc)
            pids.append(proc.pid)
        cpu_before = [cpu_seconds(pid) for pid in pids]
        out = CTX.Queue()
        with RssSampler(pids) as sampler:
            for _ in range(clients):
                job = (peers[0], params, rounds, out)
                procs.append(CTX.Process(target=harness.client_main, args=job))
                procs[-1].start()
            timeout_s = READY_TIMEOUT_S + rounds * (60 + params * 4 * clients / 10e6)
            reports = collect_reports(out, procs, timeout_s)
        outcomes = {o for r in reports for o in r["outcomes"]}
        if outcomes != {"applied"}:
            raise RuntimeError(f"every round should be applied, got {outcomes}")
        # The shards' own cuts: dense float32 blocks of the default chunk size.
        block = make_codec(Dense()).block_coordinates(DEFAULT_CHUNK_BYTES)
        cuts = shard_cuts(params, count, block)
        shards = []
        for k, pid in enumerate(pids):
            view = coordinator_view(peers[k])
            range_mb = (cuts[k + 1] - cuts[k]) * 4 / MB
            rss_mb = proc_status_bytes(pid, "VmHWM") / MB
            shards.append({
                "cpu_s_per_round": (cpu_seconds(pid) - cpu_before[k]) / rounds,
                "peak_rss_mb": rss_mb,
                "range_mb": range_mb,
                "rss_over_range": rss_mb / range_mb,
                "round_s_median": view["round_s_median"],
                "model_version": view["model_version"],
                "inbound_mb_per_round": statistics.median(view["round_mb"]),
                **sampler.summary(pid),
            })  # fmt: skip
            start_mb = shards[-1].get("rss_mb_at_start", 0.0)
            # What the model and the rounds add to the process's floor.
            shards[-1]["rss_over_range_above_start"] = (rss_mb - start_mb) / range_mb
        return {"shards": count, "per_shard": shards}
    except BaseException:
        for k in range(count):
            log("shards", f"shard{k} log:\n" + log_tail(tmp / f"shard{k}"))
        raise
    finally:
        stop_all(procs)


def sharding_goals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's two goals per N, against the one-shard run of the same size."""
    one = runs[0]["per_shard"][0]["cpu_s_per_round"]
    goals: dict[str, Any] = {}
    for run in runs[1:]:
        n = run["shards"]
        worst_cpu = max(s["cpu_s_per_round"] for s in run["per_shard"])
        worst_rss = max(s["rss_over_range"] for s in run["per_shard"])
        goals[f"cpu_per_shard_le_1_over_{n}_plus_10pct"] = worst_cpu <= one / n * 1.1
        goals[f"cpu_ratio_worst_shard_to_one_{n}"] = worst_cpu / one
        goals[f"rss_le_3x_range_{n}"] = worst_rss <= 3.0
        goals[f"rss_over_range_worst_{n}"] = worst_rss
    return goals
