"""The spool's run directory: locked while alive, removed on close or after a crash."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedgrpc.aggregate import SpoolDirectory, default_spool_root
from fedgrpc.errors import ConfigError
from tests.conftest import Spawn
from tests.helpers.eventually import eventually

REPO = Path(__file__).resolve().parents[3]

# A coordinator stand-in: opens a spool, writes one update, reports the path,
# then either dies without cleaning up or waits to be stopped.
_CHILD = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from pathlib import Path
    from fedgrpc.aggregate import SpoolDirectory
    spool = SpoolDirectory(Path(sys.argv[1]))
    acc = spool.open_round(7, 100, 2)
    acc.add_values("c", 0, np.ones(100, np.float32), 1.0, np.empty(100, np.float32))
    acc.commit_update("c", 1.0)
    Path(sys.argv[2]).write_text(str(spool.path))
    if sys.argv[3] == "crash":
        os._exit(3)
    time.sleep(60)
    """
)


def _child_argv(root: Path, ready: Path, mode: str) -> list[str]:
    return [sys.executable, "-c", _CHILD, str(root), str(ready), mode]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_a_crashed_runs_files_are_removed_at_the_next_start(tmp_path: Path) -> None:
    root, ready = tmp_path / "spool", tmp_path / "ready"
    crashed = subprocess.run(
        _child_argv(root, ready, "crash"), env=_env(), timeout=60, check=False
    )
    assert crashed.returncode == 3
    stale = Path(ready.read_text())
    assert (stale / "round-7" / "u0.f32").stat().st_size == 400

    with SpoolDirectory(root) as spool:
        assert not stale.exists()
        assert [p.name for p in root.iterdir()] == [spool.path.name]


def test_a_live_runs_files_survive_another_runs_start(
    tmp_path: Path, spawn: Spawn
) -> None:
    root, ready = tmp_path / "spool", tmp_path / "ready"
    child = spawn(_child_argv(root, ready, "wait"), env=_env())
    live = Path(eventually(lambda: ready.exists() and ready.read_text(), 60) or "")

    with SpoolDirectory(root) as spool:
        assert (Path(live) / "round-7" / "u0.f32").exists()
        assert spool.path != live
    assert child.poll() is None


def test_two_runs_in_one_process_keep_each_others_files(tmp_path: Path) -> None:
    with SpoolDirectory(tmp_path) as first:
        acc = first.open_round(1, 10, 1)
        acc.add_values("a", 0, np.ones(10, np.float32), 1.0, np.empty(10, np.float32))

        with SpoolDirectory(tmp_path) as second:
            assert (first.path / "round-1" / "u0.f32").exists()
            assert second.path.exists()


def test_close_removes_the_run_and_its_rounds(tmp_path: Path) -> None:
    spool = SpoolDirectory(tmp_path)
    acc = spool.open_round(1, 10, 1)
    acc.add_values("a", 0, np.ones(10, np.float32), 1.0, np.empty(10, np.float32))

    spool.close()
    spool.close()

    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="closed"):
        spool.open_round(2, 10, 1)


def test_a_round_can_be_opened_only_once(tmp_path: Path) -> None:
    with SpoolDirectory(tmp_path) as spool:
        spool.open_round(1, 10, 1)

        with pytest.raises(ConfigError, match="exists already"):
            spool.open_round(1, 10, 1)


def test_a_symlinked_or_file_spool_dir_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "file").write_text("")

    with pytest.raises(ConfigError, match="not a plain directory"):
        SpoolDirectory(tmp_path / "link")
    with pytest.raises(ConfigError, match="spool_dir"):
        SpoolDirectory(tmp_path / "file")


def test_the_default_spool_root_is_per_user() -> None:
    assert default_spool_root().name == f"fedgrpc-spool-{os.getuid()}"
