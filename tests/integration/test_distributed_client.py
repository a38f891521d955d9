"""DistributedDiLoCoClient's group protocol, without torchrun.

Two rank processes (gloo over a FileStore, DDP) run this file as a script
against an in-process coordinator: a skipped round must leave the replicas
identical with no weights sent, and a coordinator that goes away must make
every rank raise rank 0's error instead of leaving rank 1 in a broadcast.
The happy path with a second client is the system test's
(tests/system/test_torchrun_worker.py).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fedgrpc import ConfigError, DistributedDiLoCoClient
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread

if TYPE_CHECKING:  # the rank processes run this file without `tests` importable
    from tests.conftest import Spawn

H = 2
WAIT_S = 60.0
"""Bound on every wait, in the test and in the rank processes."""


def test_without_torch_distributed_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="init_process_group"):
        DistributedDiLoCoClient("127.0.0.1:1", torch.nn.Linear(2, 2))


def test_skipped_round_keeps_ranks_equal_and_rank0_errors_reach_every_rank(
    spawn: Spawn, tmp_path: Path
) -> None:
    from tests.helpers import eventually  # the rank processes cannot import tests

    # One test for two behaviours: starting the rank processes is most of its cost.
    # Arrange: a coordinator needing 2 clients, so the worker's rounds skip.
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=2,
        inner_steps=H,
        round_timeout_s=0.5,
    )
    with serve_in_thread(config) as coordinator:
        ranks = [_start_rank(spawn, tmp_path, r, coordinator.address) for r in (0, 1)]
        outs = [tmp_path / f"rank{r}.json" for r in (0, 1)]

        # Act: one round, then stop the coordinator before the second.
        eventually(
            lambda: all(_read(o).get("first") for o in outs) or _crashed(ranks),
            timeout_s=WAIT_S,
        )
        assert not _crashed(ranks), _logs(tmp_path)
        coordinator.stop()
    (tmp_path / "go").touch()
    for process in ranks:
        assert process.wait(timeout=WAIT_S) == 0, _logs(tmp_path)
    results = [_read(o) for o in outs]

    # Assert: the skipped round kept each rank's local progress, identical.
    firsts = [r["first"] for r in results]
    assert [f["outcome"] for f in firsts] == ["skipped", "skipped"]
    assert [f["version"] for f in firsts] == [0, 0]
    assert firsts[0]["digest"] == firsts[1]["digest"]
    assert all(f["moved"] for f in firsts)
    # Rank 0's coordinator error became the same exception class on rank 1.
    errors = [r["error"] for r in results]
    assert errors[0][0] == errors[1][0]
    assert errors[0][0] in {"ShuttingDownError", "CoordinatorUnavailableError"}
    assert errors[1][1].startswith("rank 0 failed: ")
    assert all("after a failed sync point" in r["after"] for r in results)


def _start_rank(
    spawn: Spawn, tmp_path: Path, rank: int, address: str
) -> subprocess.Popen[Any]:
    argv = [sys.executable, __file__, "--rank", str(rank), "--dir", str(tmp_path)]
    with (tmp_path / f"rank{rank}.log").open("w") as log:  # the child keeps a copy
        return spawn([*argv, "--target", address], stderr=log, stdout=log)


def _crashed(processes: list[subprocess.Popen[Any]]) -> bool:
    return any(p.poll() not in (None, 0) for p in processes)


def _logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(tmp_path.glob("rank*.log")))


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


# -- the rank process ----------------------------------------------------------


def _digest(model: torch.nn.Module) -> str:
    sha = hashlib.sha256()
    for param in model.parameters():
        sha.update(param.detach().numpy().tobytes())
    return sha.hexdigest()


def _write(path: Path, out: dict[str, Any]) -> None:
    """Atomically, so the test never reads half a file."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(out))
    partial.replace(path)


def _train(client: DistributedDiLoCoClient, ddp: DistributedDataParallel) -> bool:
    """H steps of DDP on this rank's data; True if the last one synced."""
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    synced = False
    for _ in range(H):
        inputs = torch.randn(8, 4)
        loss = (ddp(inputs) - inputs[:, :2]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        synced = client.step(loss, num_samples=8)
    return synced


def _rank_main(rank: int, folder: Path, target: str) -> None:
    out: dict[str, Any] = {}
    result = folder / f"rank{rank}.json"
    torch.manual_seed(rank)  # different data per rank; DDP equalises the init
    ddp = DistributedDataParallel(torch.nn.Linear(4, 2))
    model = ddp.module
    # Short reconnect_give_up_s: the stopped coordinator must surface as an
    # error on both ranks rather than be waited for.
    config = ClientConfig(
        rpc_timeout_s=10,
        round_wait_s=20,
        connect_timeout_s=10,
        reconnect_initial_s=0.1,
        reconnect_max_s=0.5,
        reconnect_give_up_s=0.5,
    )
    with DistributedDiLoCoClient(target, ddp, inner_steps=H, config=config) as client:
        start = _digest(model)
        assert _train(client, ddp)
        out["first"] = {
            "outcome": client.last_round_outcome,
            "version": client.model_version,
            "digest": _digest(model),
            "moved": _digest(model) != start,
        }
        _write(result, out)
        deadline = time.monotonic() + WAIT_S
        while not (folder / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            _train(client, ddp)
        except Exception as exc:
            out["error"] = [type(exc).__name__, str(exc)]
        try:
            client.step()
        except RuntimeError as exc:
            out["after"] = str(exc)
    _write(result, out)
    del ddp, model


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--target")
    args = parser.parse_args()
    dist.init_process_group(
        "gloo",
        init_method=f"file://{args.dir / 'store'}",
        rank=args.rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=WAIT_S),
    )
    try:
        _rank_main(args.rank, args.dir, args.target)
    finally:
        gc.collect()  # DDP must be gone before its group (see torchrun_worker.py)
        dist.destroy_process_group()


@pytest.mark.parametrize("round_mode", ["streaming", "deadline"])
def test_round_modes_that_sync_off_the_h_boundary_are_refused(
    tmp_path: Path, round_mode: str
) -> None:
    from fedgrpc.errors import IncompatibleClientError

    config = CoordinatorConfig(
        seed_from_first_client=True, listen="127.0.0.1:0", open_enrollment=True,
        min_clients=1, inner_steps=4, round_mode=round_mode, fragments=2,
        round_duration_s=1.0 if round_mode == "deadline" else 0.0,
    )  # fmt: skip
    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        with (
            serve_in_thread(config) as coordinator,
            pytest.raises(IncompatibleClientError, match=repr(round_mode)),
        ):
            DistributedDiLoCoClient(coordinator.address, torch.nn.Linear(2, 2))
    finally:
        dist.destroy_process_group()
