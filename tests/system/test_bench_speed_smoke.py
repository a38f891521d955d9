"""`make bench`'s speed and memory benches: quick modes print the promised JSON.

Smoke only, as test_bench_smoke.py: figures are measured by the benches
themselves, never asserted as timings here (this machine is shared and
noisy). Apart from the learning benches' smoke tests because these are
the ones `make bench` runs (round time, ingest, signing, masking, scale).
"""

from __future__ import annotations

import statistics

import pytest

from tests.helpers.bench import run_quick_bench

pytestmark = pytest.mark.system


def test_compression_bench_quick() -> None:
    report = run_quick_bench("compression.py")
    assert report["bench"] == "compression"
    goals = report["goals"]
    assert isinstance(goals, dict)
    assert goals["ratio_vs_fp32_min"] > 100  # top-k 1 % + int8 on its synthetic data


def test_signing_bench_quick() -> None:
    report = run_quick_bench("signing.py")
    assert report["bench"] == "signing"
    ingest, joins = report["ingest"], report["joins"]
    assert isinstance(ingest, dict)
    assert isinstance(joins, dict)
    assert ingest["ingest_mb_s_signed"] > 0
    assert ingest["ingest_mb_s_unsigned"] > 0
    assert set(ingest["by_hash"]) == {  # type: ignore[call-overload]
        "blake3", "sha256", "blake3_every_chunk",
    }  # fmt: skip
    assert joins["joins_per_s_sequential"] > 0
    goals = report["goals"]
    assert isinstance(goals, dict)
    assert "ingest_signed>=0.85x_unsigned_blake3" in goals  # measured, not asserted


def test_round_latency_bench_quick() -> None:
    """The round is reported against the time its bytes take at the raw rate."""
    report = run_quick_bench("round_latency.py", "--memory", "default,lean")
    assert report["bench"] == "round_latency"
    cases = report["cases"]
    assert isinstance(cases, list)
    assert [c["memory"] for c in cases] == ["default", "lean"]
    # The raw ceiling before the first case and after each: 3 streams each.
    raw_runs = report["raw_grpc_mb_s_all"]
    assert isinstance(raw_runs, list)
    assert [len(run) for run in raw_runs] == [3, 3, 3]
    assert all(rate > 0 for run in raw_runs for rate in run)
    # Each case is rated against the measurements on both sides of it.
    assert cases[1]["raw_grpc_mb_s_around"] == [*raw_runs[1], *raw_runs[2]]
    raw = cases[0]["raw_grpc_mb_s"]
    assert raw == pytest.approx(
        statistics.median([*raw_runs[0], *raw_runs[1]]), rel=0.01
    )
    # Stages and optimizer state on disk: the same rounds, every byte counted.
    assert all(c["coordinator_round_bytes_ok"] is True for c in cases)
    assert (
        cases[0]["coordinator_bytes_received"] == cases[1]["coordinator_bytes_received"]
    )
    case = cases[0]
    # The seeding round and the first full one (buffers faulted in) are apart.
    assert len(case["warmup_round_s"]) == 2
    assert len(case["round_s_all"]) == 2
    # Two clients each pull and push the fp32 model once: 4 x model_mb.
    limit_s = 2 * case["clients"] * case["model_mb"] / raw
    assert case["round_over_raw_limit"] == pytest.approx(
        case["round_s_median"] / limit_s, rel=0.01
    )
    goals = report["goals"]
    assert isinstance(goals, dict)
    assert goals["round_100.7M_2clients<=1.5x_raw_limit"] is None  # not measured
    assert "peak_rss<=3x_model_lean_memory" in goals


def test_clients_scale_bench_quick() -> None:
    report = run_quick_bench("clients_scale.py")
    assert report["bench"] == "clients_scale"
    clients = report["clients"]
    assert isinstance(clients, int)
    assert clients > 0
    assert report["clients_completed_round"] == clients  # every client, no timing
    assert report["join_s"] is not None
    assert report["round_wall_s"] is not None
    assert isinstance(report["coordinator_peak_rss_mb"], float)
    assert report["coordinator_cpu_s"] is not None
    assert report["goals"] == {"clients_completed_round": True}


def test_secagg_bench_quick() -> None:
    report = run_quick_bench("secagg.py")
    assert report["bench"] == "secagg"
    results = report["results"]
    assert isinstance(results, dict)
    for n in (4, 8):
        plain, secure = results[f"n{n}_plain"], results[f"n{n}_secure"]
        assert plain["round_s"] > 0
        assert secure["round_s"] > 0
        assert secure["unmask_dropout_s"] > 0  # a round recovered with a dropout
        assert secure["bytes_per_client"] > plain["bytes_per_client"]
    many = results["many_clients"]
    assert many["n_clients"] == 12
    assert many["round_s"] > 0  # the Harary round completed
    assert many["degree"] == 8
    goals = report["goals"]
    assert isinstance(goals, dict)
    # Measured, never asserted here.
    assert "secure<=2x_plain_n8_own_core_estimate" in goals
    assert "secure<=4x_plain_n8_wall_2_cores" in goals
    assert "unmask_1_dropped<=0.5s_n8" in goals
