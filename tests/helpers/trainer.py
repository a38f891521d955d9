"""A new user's client process: a tiny regression loop with DiLoCoClient embedded.

`python -m tests.helpers.trainer ADDRESS SYNCS REPORT [--recreate-at K]
[--idle-at K] [--until-version V] [--reconnect-max-s S]`
(run from the repository root) joins with a throwaway key (no identity_key,
as a first try would), trains until SYNCS sync points ran, and appends one
JSON line per sync point to REPORT: the client id, the outcome, the model
version and whether the run finished. `--recreate-at K` replaces the client
after K sync points the way a notebook cell run twice does: a new
DiLoCoClient (a new throwaway key) is bound to the same name and the old one
is dropped without `close()`. `--idle-at K` stops training after K sync
points but keeps the client open (heartbeating), so a test can SIGKILL it
knowing no push is in flight. `--until-version V` stops early once the
global model reached version V, so clients whose sync points went
differently (some offline) still end on the same round. The process ends by
itself after RUN_S.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig

RUN_S = 150.0
"""Longest the loop runs, whatever happens to the coordinator."""
PACE_S = 0.05
"""Stands in for training time between inner steps."""


def report_lines(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a report (each is written and flushed at once)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]]


def _write(report: IO[str], **fields: Any) -> None:
    report.write(json.dumps(fields) + "\n")
    report.flush()


def _config(reconnect_max_s: float) -> ClientConfig:
    return ClientConfig(
        rpc_timeout_s=10, round_wait_s=120, connect_timeout_s=30,
        heartbeat_interval_s=0.5, reconnect_initial_s=0.1,
        reconnect_max_s=reconnect_max_s, reconnect_give_up_s=120,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Train until `syncs` sync points ran (or RUN_S passed)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("syncs", type=int)
    parser.add_argument("report", type=Path)
    parser.add_argument("--recreate-at", type=int, default=-1)
    parser.add_argument("--idle-at", type=int, default=-1)
    parser.add_argument("--until-version", type=int, default=-1)
    parser.add_argument("--reconnect-max-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + RUN_S
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    config = _config(args.reconnect_max_s)
    client = DiLoCoClient(args.address, model, config=config)
    with args.report.open("w") as report:
        _write(report, client=client.client_id, joined=True)
        done, recreated = 0, False
        while done < args.syncs and time.monotonic() < deadline:
            if done == args.idle_at:
                _write(report, client=client.client_id, idle=done)
                while time.monotonic() < deadline:  # until the test kills us
                    time.sleep(PACE_S)
                break
            if done == args.recreate_at and not recreated:
                recreated = True
                # The old client is dropped, not closed: rebinding the name is
                # all a user re-running a cell does.
                client = DiLoCoClient(args.address, model, config=config)
                _write(report, client=client.client_id, joined=True)
            inputs = torch.randn(16, 8)
            loss = nn.functional.mse_loss(model(inputs), inputs.sum(1, keepdim=True))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            time.sleep(PACE_S)
            if client.step(loss=loss.item(), num_samples=16):
                done += 1
                _write(report, client=client.client_id, sync=done,
                       outcome=client.last_round_outcome,
                       version=client.model_version,
                       finished=client.finished)  # fmt: skip
                if 0 <= args.until_version <= client.model_version:
                    break
        client.close()


if __name__ == "__main__":
    main()


# -- for the tests that drive these processes ----------------------------------

ROOT = Path(__file__).resolve().parents[2]
ROUND_TIMEOUT_S = 60.0
"""Long enough that a round waiting out its deadline is unmistakable."""


def start_trainer(
    spawn: Any, address: str, syncs: int, report: Path, *flags: str
) -> Any:
    """`python -m tests.helpers.trainer` as a child process; stderr beside REPORT."""
    argv = [sys.executable, "-m", "tests.helpers.trainer", address, str(syncs),
            str(report), *flags]  # fmt: skip
    with report.with_suffix(".err").open("w") as stderr:
        return spawn(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)


def outcomes(report: Path) -> list[str]:
    """The outcome of every sync point in `report`, in order."""
    return [line["outcome"] for line in report_lines(report) if "outcome" in line]


def assert_no_round_waited(closed: list[dict[str, Any]]) -> None:
    """Every closed round (round_closed log events) applied, none by its deadline.

    A round closed by "deadline" waited ROUND_TIMEOUT_S for a client that
    was not coming: what a leaving client must never cost its peers.
    """
    assert closed, "no round closed"
    late = [e for e in closed if e["outcome"] != "applied" or e["reason"] == "deadline"]
    assert not late, late
