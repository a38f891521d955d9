"""The benches' quick modes run and print the JSON shape `make bench` promises.

Smoke only: figures are measured by the benches themselves, never asserted
as timings here (this machine is shared and noisy).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.system


def _run(script: str, *args: str, timeout_s: float = 170) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--quick", *args],
        capture_output=True, text=True, timeout=timeout_s, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_compression_bench_quick() -> None:
    report = _run("compression.py")
    assert report["bench"] == "compression"
    goals = report["goals"]
    assert isinstance(goals, dict)
    assert goals["ratio_vs_fp32_min"] > 100  # top-k 1 % + int8 on its synthetic data


@pytest.mark.timeout(200)  # one bench invocation of up to 170 s (_run)
def test_convergence_bench_quick() -> None:
    names = "dp,dense,topk1,sparseloco,sparseloco-down"  # the rest: same paths
    report = _run("convergence.py", "--configs", names)
    assert report["bench"] == "convergence"
    configs = report["configs"]
    assert isinstance(configs, dict)
    assert {"dp", "dense", "topk1", "sparseloco"} <= set(configs)
    dense, topk1 = configs["dense"], configs["topk1"]
    assert dense["bytes_up"] > 50 * topk1["bytes_up"]
    assert dense["final_val_loss"]["mean"] < 5.0  # it trained (uniform bytes: 5.55)
    # A compressed downlink: the steps, not the model, go down each round.
    sparse, down = configs["sparseloco"], configs["sparseloco-down"]
    assert down["downlink"] == "topk:0.04:int8"
    assert sparse["bytes_down"] > 20 * down["bytes_down"]
    assert down["total_ratio_vs_dense"] > 20 * sparse["total_ratio_vs_dense"] / 2


@pytest.mark.timeout(300)  # two bench invocations of up to 170 s each (_run)
def test_outer_optimizers_bench_quick_reports_every_optimizer_and_resumes(
    tmp_path: Path,
) -> None:
    # Arrange: one adaptive optimizer (the others share its code paths; the
    # optimizers themselves are tested in tests/unit/optim). Four quick runs.
    names = "fedyogi"
    cache = str(tmp_path / "cache")

    # Act: run into a cache, then report from the cache alone.
    report = _run("outer_optimizers.py", "--optimizers", names, "--cache", cache)
    again = _run(
        "outer_optimizers.py", "--optimizers", names, "--cache", cache, "--only-cached"
    )

    # Assert: every optimizer trained over 2 seeds, ranked against dp.
    assert report["bench"] == "outer_optimizers"
    optimizers = report["optimizers"]
    assert isinstance(optimizers, dict)
    assert set(optimizers) == set(names.split(","))
    for row in optimizers.values():
        assert row["final_val_loss"]["seeds"] == 2
        assert row["final_val_loss"]["mean"] < 5.0  # it trained (uniform bytes: 5.55)
    table = report["table"]
    assert isinstance(table, list)
    assert len(table) == 2  # the optimizer and data parallel
    assert again["table"] == table
    assert again["missing_runs"] == []


def test_signing_bench_quick() -> None:
    report = _run("signing.py")
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
    report = _run("round_latency.py", "--memory", "default,lean")
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
    report = _run("clients_scale.py")
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
    report = _run("secagg.py")
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


@pytest.mark.timeout(200)
def test_selection_bench_quick_compares_two_of_four_with_all_four() -> None:
    report = _run("selection.py")
    assert report["bench"] == "selection"
    cases = report["cases"]
    assert isinstance(cases, dict)
    assert set(cases) == {"all", "k2of4"}
    for row in cases.values():
        assert row["final_val_loss"]["mean"] < 5.0  # it trained (uniform bytes: 5.55)
    # Half the workers push and pull each round: half the bytes up.
    assert cases["k2of4"]["bytes_up"][0] < 0.6 * cases["all"]["bytes_up"][0]


@pytest.mark.timeout(300)  # two bench invocations of up to 170 s each (_run)
def test_robustness_bench_quick_scores_attacks_against_no_attack_and_resumes(
    tmp_path: Path,
) -> None:
    # Arrange: one model-poisoning and one colluding attack, mean and the
    # default robust rule, the 25 % config (8 workers, 2 attackers), trust pass.
    cache = str(tmp_path / "cache")
    flags = ("--attacks", "signflip,alie", "--cache", cache)

    # Act: run into a cache, then report from the cache alone.
    report = _run("robustness.py", *flags)
    again = _run("robustness.py", *flags, "--only-cached")

    # Assert: every cell trained and is scored against the no-attack mean.
    assert report["bench"] == "robustness"
    cells = report["cells"]
    assert isinstance(cells, dict)
    for attack in ("none", "signflip", "alie"):
        assert set(cells["25"][attack]) == {"mean", "hybrid"}
        for cell in cells["25"][attack].values():
            assert cell["final_val_loss"]["mean"] < 5.0  # it trained (uniform: 5.55)
    assert cells["25"]["none"]["mean"]["gap_pct"]["mean"] == 0.0  # the baseline
    # Sign-flipped updates cost the plain mean loss: the attack reached it.
    assert cells["25"]["signflip"]["mean"]["gap_pct"]["mean"] > 1.0
    trust = report["trust"]
    assert isinstance(trust, dict)
    counts = trust["counts"]
    assert counts["true_pos"] + counts["false_neg"] == 2 * 2  # 2 attackers x 2 runs
    goals = report["goals"]
    assert isinstance(goals, list)
    assert all({"goal", "value", "met"} <= set(goal) for goal in goals)
    assert again["cells"] == cells
    assert again["missing_runs"] == []


def test_robust_aggregation_bench_quick_reports_every_rule() -> None:
    report = _run("robust_aggregation.py")
    assert report["bench"] == "robust_aggregation"
    cases = report["aggregation"]
    assert isinstance(cases, list)
    rules = cases[0]["rules"]
    assert {"krum", "geometric_median", "centered_clipping", "hybrid"} <= set(rules)
    assert all(r["added_peak_rss_mb"] >= 0 for r in rules.values())
    rounds = report["rounds"]
    assert isinstance(rounds, list)
    assert [r["rule"] for r in rounds] == ["krum"]
    assert rounds[0]["coordinator_round_s_median"] > 0


def test_privacy_bench_quick_reports_epsilon_reached_per_task() -> None:
    report = _run("privacy.py", "--epsilons", "8")
    assert report["bench"] == "privacy"
    section = report["record_level"]
    assert isinstance(section, dict)
    for task in ("digits", "char_lm"):
        runs = section[task]["runs"]
        assert set(runs) == {"non_private", "eps_8"}
        assert 7.9 <= runs["eps_8"]["epsilon"] <= 8.0  # planned, spent, not passed
        assert runs["non_private"]["epsilon"] == 0.0
    assert section["digits"]["runs"]["non_private"]["accuracy"] > 0.5
    levels = report["client_level"]
    assert isinstance(levels, dict)
    assert set(levels["table"]) == {"none", "central@8", "distributed@8"}
    for mode in ("central@8", "distributed@8"):
        assert 7.9 <= levels["table"][mode]["epsilon"] <= 8.0
    assert "8" in levels["distributed_vs_central_loss_pct"]


def test_central_dp_bench_quick_reports_the_noise_stage_share_of_a_real_round() -> None:
    report = _run("central_dp.py")
    assert report["bench"] == "central_dp"
    row = report["round"]
    assert isinstance(row, dict)
    assert row["off_round_s"] > 0
    assert row["central_round_s"] > 0
    assert 0 < row["noise_stage_share_of_round"] < 1
    assert isinstance(row["goal_noise_stage_le_5pct"], bool)


@pytest.mark.timeout(300)  # two bench invocations of up to 170 s each (_run)
def test_heterogeneity_bench_quick_reports_every_cell_gap_and_goal_and_resumes(
    tmp_path: Path,
) -> None:
    # Arrange: the quick grid (every method, iid and dirichlet:0.5, one seed).
    cache = str(tmp_path / "cache")

    # Act: run into a cache, then report from the cache alone.
    report = _run("heterogeneity.py", "--cache", cache)
    again = _run("heterogeneity.py", "--cache", cache, "--only-cached")

    # Assert: a cell per (partition, method), gaps paired with centralized.
    assert report["bench"] == "heterogeneity"
    cells, gaps = report["accuracy_pct"], report["gap_to_centralized_points"]
    assert isinstance(cells, dict)
    assert isinstance(gaps, dict)
    methods = {"centralized", "fedavg", "diloco", "fedprox", "fedyogi"}
    assert set(cells) == set(gaps) == {"iid", "dirichlet:0.5"}
    for partition, row in cells.items():
        assert set(row) == methods
        assert row["centralized"]["mean"] > 50  # it trained (chance: 10 %)
        for method in methods - {"centralized"}:
            gap = row["centralized"]["mean"] - row[method]["mean"]
            assert gaps[partition][method]["mean"] == pytest.approx(gap, abs=0.02)
    goals = report["goals"]
    assert isinstance(goals, dict)
    assert isinstance(goals["diloco_within_2_points_at_iid"], bool)  # measured
    assert again["accuracy_pct"] == cells
    assert again["missing_runs"] == []


def test_lora_bench_quick() -> None:
    report = _run("lora.py")
    assert report["bench"] == "lora"
    full, lora = report["full"], report["lora"]
    assert isinstance(full, dict)
    assert isinstance(lora, dict)
    assert full["rounds"] == lora["rounds"] == 2  # the same budget for both
    # Only the adapter travels: its 4 bytes per trainable parameter, per round.
    assert lora["uplink_bytes_per_round"] == 4 * lora["trainable_params"]
    assert full["uplink_bytes_per_round"] == 4 * full["trainable_params"]
    assert lora["uplink_bytes_per_round"] < 0.1 * full["uplink_bytes_per_round"]
    assert full["val_loss_final"] < full["val_loss_start"]  # it trained
    goals = report["goals"]
    assert isinstance(goals, dict)
    assert "lora_uplink<=2%_full" in goals  # measured, never asserted here


def test_dashboard_bench_quick_compares_open_dashboards_with_none() -> None:
    report = _run("dashboard.py")
    assert report["bench"] == "dashboard"
    assert report["viewers"] == 10
    for side in ("none", "dashboards"):
        block = report[side]
        assert isinstance(block, dict)
        assert len(block["round_s_all"]) == 2
        assert block["coordinator_cpu_s_per_round"] > 0
    assert report["viewer_errors"] == []
    # Each open dashboard received the snapshot at connect and one per round.
    assert isinstance(report["viewer_events_min"], int)
    assert report["viewer_events_min"] >= 1  # every tab read its event stream
    assert isinstance(report["round_time_ratio"], float)


@pytest.mark.timeout(300)  # 4 quick runs (~1.5 min on 2 cores), then a report
def test_heterogeneous_bench_quick_compares_every_round_mode_and_resumes(
    tmp_path: Path,
) -> None:
    # Arrange: the quick grid (one seed, tiny runs), two runs side by side.
    cache = str(tmp_path / "cache")

    # Act: run into a cache, then report from the cache alone.
    report = _run("heterogeneous.py", "--cache", cache, "--jobs", "2", timeout_s=240)
    again = _run("heterogeneous.py", "--cache", cache, "--only-cached")

    # Assert: every mode ran (crash rate 0.1), read off real curves.
    assert report["bench"] == "heterogeneous"
    settings = report["settings"]
    assert isinstance(settings, dict)
    assert set(settings) == {"crash_0.1"}
    for setting in settings.values():
        modes = setting["modes"]
        assert set(modes) == {"sync", "deadline", "buffered_async", "streaming"}
        assert setting["wall_budget_s"] > 0
        assert setting["token_budget"] > 0
        for figures in modes.values():
            assert 0 < figures["goodput"]["mean"] <= 1
            # Every run has a model at the common budgets (at worst the
            # initial one, 5.54: a sync round may not have closed by then).
            assert figures["val_loss_at_equal_time"]["mean"] < 5.6
            assert figures["val_loss_at_equal_tokens"]["mean"] < 5.6
        # The budgets are the shortest run's end, where it had trained.
        for budget in ("val_loss_at_equal_time", "val_loss_at_equal_tokens"):
            assert min(f[budget]["mean"] for f in modes.values()) < 5.0
        # Sync reaches its own final loss, so its time to target is its run.
        sync = modes["sync"]
        assert sync["time_to_target_s"]["mean"] > 0
        assert setting["vs_sync"]["sync"]["time_to_target_ratio"] == 1.0
    goals = report["goals"]
    assert isinstance(goals, dict)
    for name, goal in goals.items():
        assert isinstance(goal["met"], bool), name  # measured, never assumed
    # Streaming (P = 2 here): each sync's payload is half a dense one.
    streaming = report["streaming_goal"]
    assert isinstance(streaming, dict)
    assert 0.45 < streaming["ratio"] <= 0.55
    assert isinstance(streaming["loss_met"], bool)
    assert isinstance(streaming["met"], bool)
    assert again["settings"] == settings
    assert again["missing_runs"] == []


def test_shards_bench_quick_reports_the_trees_root_inbound_bytes() -> None:
    report = _run("shards.py", "--shards", "")
    assert report["bench"] == "shards"
    tree = report["tree"]
    assert isinstance(tree, dict)
    assert set(tree) == {"root", "leaf0", "leaf1"}
    assert tree["root"]["model_version"] == 2  # every round applied at the root
    # Byte counts, not timings: one dense update per leaf instead of per client.
    assert report["root_inbound_ratio"] == 0.5
    assert report["goals"] == {"root_inbound_le_1_over_L": True}


@pytest.mark.timeout(200)
def test_shards_bench_quick_reports_each_shards_range_of_the_bytes() -> None:
    # Parameter shards (1 and 2 at --quick): every round applied on every
    # shard, and the shards' inbound bytes add up to the one shard's.
    report = _run("shards.py", "--skip-tree")
    assert "tree" not in report
    runs = report["sharding"]
    assert isinstance(runs, list)
    assert [run["shards"] for run in runs] == [1, 2]
    one, two = (run["per_shard"] for run in runs)
    assert [s["model_version"] for s in one + two] == [2, 2, 2]
    total = sum(s["inbound_mb_per_round"] for s in two)
    assert abs(total - one[0]["inbound_mb_per_round"]) < 1e-2 * total  # rounded
    assert abs(sum(s["range_mb"] for s in two) - one[0]["range_mb"]) < 1e-2
