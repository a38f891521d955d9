"""bench/convergence.py's issue-18 grid at H = 50 (`_convergence_h50`).

Smoke only, as tests/system/test_bench_smoke.py: the quick mode runs the
grid's knobs end to end (outer lr, weight decay in the outer step, top-k
over runs of 16, seeded random-k, low-rank factors per worker and shared)
and the bytes stay >= 100x below dense
with every header and index byte counted; and the shared index set's
residual-age ranking against a random set.
Losses are measured by the bench, never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.system


@pytest.mark.timeout(200)  # one bench invocation of up to 170 s
def test_grid_configs_reach_the_simulation() -> None:
    names = (
        "dense,sparseloco3-lr2,sparseloco3-lr2-owd,block16-d10.5-lr1-b80,"
        "randk12.5-lr2.5-b60"
    )
    configs = _quick(names)

    plain, moved = configs["sparseloco3-lr2"], configs["sparseloco3-lr2-owd"]
    for grid in (plain, moved):
        assert grid["outer"] == "sparseloco lr 2.0 m 0.0"
        assert grid["codec"] == "topk:0.03:int2"
        assert grid["up_ratio_vs_dense"] > 100
    # Runs of 16 at 10.5 %: about sparseloco3's bytes, so also >= 100x.
    runs = configs["block16-d10.5-lr1-b80"]
    assert runs["codec"] == "topk:0.105:int2:b16"
    assert runs["outer"] == "sparseloco lr 1.0 m 0.0"
    assert 100 < runs["up_ratio_vs_dense"] < 1.1 * plain["up_ratio_vs_dense"]
    # Random-k 12.5 % int2: no positions, about sparseloco3's bytes too.
    seeded = configs["randk12.5-lr2.5-b60"]
    assert seeded["codec"] == "randk:0.125:int2"
    assert 100 < seeded["up_ratio_vs_dense"] < 1.1 * plain["up_ratio_vs_dense"]
    # Same seed, batches and codec rng: only where weight decay runs differs.
    assert moved["final_val_loss"]["mean"] != plain["final_val_loss"]["mean"]


@pytest.mark.timeout(200)
def test_low_rank_configs_reach_the_simulation() -> None:
    configs = _quick("dense,lowrank1-int8,lowrank7-shared-int8")

    # Rank 1 int8 factors: ~150x; the shared rank-7 form sends two pushes a
    # round at about top-k 10 % int8's bytes (~26x).
    low_rank, shared = configs["lowrank1-int8"], configs["lowrank7-shared-int8"]
    assert low_rank["codec"] == "lowrank:1:int8"
    assert low_rank["outer"] == "nesterov lr 0.7 m 0.7"
    assert low_rank["up_ratio_vs_dense"] > 140
    assert shared["codec"] == "lowrank-shared:7:int8"
    assert 20 < shared["up_ratio_vs_dense"] < 35
    assert shared["bytes_down"] > configs["dense"]["bytes_down"]  # P^ announced


def _quick(names: str) -> dict[str, Any]:
    """`convergence.py --quick --configs NAMES`'s per-config report."""
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "convergence.py"), "--quick",
         "--configs", names],
        capture_output=True, text=True, timeout=170, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    configs: dict[str, Any] = json.loads(result.stdout)["configs"]
    return configs


def test_new_case_field_keeps_earlier_cache_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrange: the bench's modules import each other from bench/.
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from _convergence_pool import _cache_key
    from _convergence_sim import Case

    case = Case(name="x", kind="diloco", rounds=1, inner_steps=5, seed=0)

    # Act / Assert: a field at its default stays out of the key; set, it is in.
    assert "outer_weight_decay" not in _cache_key(case)
    assert _cache_key(case).endswith("clients_per_round=0)")
    moved = replace(case, outer_weight_decay=True)
    assert "outer_weight_decay=True" in _cache_key(moved)


@pytest.mark.timeout(200)
def test_shared_set_rankings_reach_the_simulation() -> None:
    """The residual-age ranking (the library's rule) against a random set."""
    configs = _quick(
        "shared10-age-eps30-sloco-lr2.5-b60-noguard,"
        "randk10-shared-sloco-lr2.5-b60-noguard"
    )

    aged, random = (
        configs["shared10-age-eps30-sloco-lr2.5-b60-noguard"],
        configs["randk10-shared-sloco-lr2.5-b60-noguard"],
    )
    assert aged["codec"] == "shared:0.1:0.3:age:noguard"
    assert random["codec"] == "shared:0.1:1.0:noguard"
    for shared in (aged, random):
        assert shared["outer"] == "sparseloco lr 2.5 m 0.0"
    # Same k positions every round, so the same bytes; only the choice differs.
    assert aged["bytes_up"] == random["bytes_up"]
    assert aged["final_val_loss"]["mean"] != random["final_val_loss"]["mean"]
