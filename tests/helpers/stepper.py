"""A scripted DiLoCo client process for fault drills: known pushes, a JSON report.

`python -m tests.helpers.stepper ADDRESS SEED REPORT GATE_AT` (run from the
repository root) joins with H = 1 and, before every sync point, moves its
weights by a seeded step, so the pseudo-gradient it pushes is known. Each
sync point appends one JSON line to REPORT: the base version, what was
pushed, the outcome, the new version, and the global weights whenever new
ones were loaded. Before sync point GATE_AT (-1: never) it idles, still
heartbeating, until `REPORT.go` exists, so a test can SIGSTOP it there
knowing it is not in the middle of a push. `check_means` then checks the
coordinator's FedAvg arithmetic from the reports of all clients.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig
from tests.helpers.scripted import flat, random_steps

CONFIG = ClientConfig(
    rpc_timeout_s=10, round_wait_s=60, connect_timeout_s=30,
    heartbeat_interval_s=0.5, reconnect_initial_s=0.1, reconnect_max_s=5.0,
)  # fmt: skip
"""Heartbeats every 0.5 s, so a drill can use a short session_timeout_s."""
RUN_S = 100.0
"""The process ends by itself after this long, whatever the test does."""
MAX_SYNCS = 2000
PACE_S = 0.05
"""Stands in for training time between sync points, so rounds do not spin."""


def report_lines(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a report (each is written and flushed at once)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]]


def check_means(
    reports: list[list[dict[str, Any]]], updates: dict[int, int]
) -> set[int]:
    """FedAvg: w(v + 1) == w(v) - mean of the pushes applied from base v.

    `updates`: base version -> updates the coordinator applied from it. Only
    rounds whose pushes every client reported are checked (a client killed
    at the end may not have written its last line); returns their bases.
    Every client must also have loaded the same weights for a version.
    """
    weights: dict[int, np.ndarray] = {}
    pushes: dict[int, list[np.ndarray]] = {}
    for line in (line for lines in reports for line in lines):
        if "weights" in line:
            loaded = np.array(line["weights"], np.float32)
            first = weights.setdefault(line["version"], loaded)
            np.testing.assert_array_equal(loaded, first)
        if line.get("outcome") == "applied":
            pushed = np.array(line["pushed"], np.float32)
            pushes.setdefault(line["base"], []).append(pushed)
    complete = {b for b, pushed in pushes.items() if len(pushed) == updates[b]}
    for base in complete:
        expected = weights[base] - np.mean(pushes[base], axis=0)
        np.testing.assert_allclose(weights[base + 1], expected, rtol=1e-5, atol=1e-6)
    return complete


def _write(report: IO[str], **fields: Any) -> None:
    report.write(json.dumps(fields) + "\n")
    report.flush()


def _sync(
    client: DiLoCoClient, model: nn.Linear, step: torch.Tensor, loaded: torch.Tensor
) -> dict[str, Any]:
    """Move the weights by `step`, run the sync point; its report line."""
    base = client.model_version
    with torch.no_grad():
        model.weight.sub_(step[:-1].view(model.weight.shape))
        model.bias.sub_(step[-1:])
    pushed = loaded - flat(model)  # what the client pushes: base - local
    client.step(None, num_samples=1)
    line = {
        "base": base,
        "pushed": pushed.tolist(),
        "outcome": client.last_round_outcome,
        "version": client.model_version,
    }
    if client.model_version != base:  # applied or stale: global weights loaded
        line["weights"] = flat(model).tolist()
    return line


def main(address: str, seed: int, report_path: Path, gate_at: int) -> None:
    """Sync points until RUN_S is up or the test kills the process."""
    go, deadline = report_path.with_suffix(".go"), time.monotonic() + RUN_S
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    with (
        DiLoCoClient(address, model, inner_steps=1, config=CONFIG) as client,
        report_path.open("w") as report,
    ):
        loaded = flat(model)  # the global weights pseudo-gradients start from
        _write(report, client=client.client_id, version=client.model_version,
               weights=loaded.tolist())  # fmt: skip
        for k, step in enumerate(random_steps(MAX_SYNCS, loaded.numel(), seed)):
            if k == gate_at:
                _write(report, gated=k, version=client.model_version)
                while not go.exists() and time.monotonic() < deadline:
                    time.sleep(PACE_S)
            if time.monotonic() > deadline:
                break
            time.sleep(PACE_S)
            line = _sync(client, model, step, loaded)
            if "weights" in line:
                loaded = torch.tensor(line["weights"])
            _write(report, **line)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
