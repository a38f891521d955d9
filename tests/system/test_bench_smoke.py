"""The learning, privacy, robustness and scale-out benches' quick modes run.

Each prints the JSON shape its README section promises (the speed benches
`make bench` runs are test_bench_speed_smoke.py). Smoke only: figures are
measured by the benches themselves, never asserted as timings here (this
machine is shared and noisy).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.bench import run_quick_bench

pytestmark = pytest.mark.system


@pytest.mark.timeout(200)  # one bench invocation of up to 170 s (run_quick_bench)
def test_convergence_bench_quick() -> None:
    names = "dp,dense,topk1,sparseloco,sparseloco-down"  # the rest: same paths
    report = run_quick_bench("convergence.py", "--configs", names)
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


@pytest.mark.timeout(300)  # two bench invocations of up to 170 s each (run_quick_bench)
def test_outer_optimizers_bench_quick_reports_every_optimizer_and_resumes(
    tmp_path: Path,
) -> None:
    # Arrange: one adaptive optimizer (the others share its code paths; the
    # optimizers themselves are tested in tests/unit/optim). Four quick runs.
    names = "fedyogi"
    cache = str(tmp_path / "cache")

    # Act: run into a cache, then report from the cache alone.
    report = run_quick_bench(
        "outer_optimizers.py", "--optimizers", names, "--cache", cache
    )
    again = run_quick_bench(
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


@pytest.mark.timeout(200)
def test_selection_bench_quick_compares_two_of_four_with_all_four() -> None:
    report = run_quick_bench("selection.py")
    assert report["bench"] == "selection"
    cases = report["cases"]
    assert isinstance(cases, dict)
    assert set(cases) == {"all", "k2of4"}
    for row in cases.values():
        assert row["final_val_loss"]["mean"] < 5.0  # it trained (uniform bytes: 5.55)
    # Half the workers push and pull each round: half the bytes up.
    assert cases["k2of4"]["bytes_up"][0] < 0.6 * cases["all"]["bytes_up"][0]


@pytest.mark.timeout(300)  # two bench invocations of up to 170 s each (run_quick_bench)
def test_robustness_bench_quick_scores_attacks_against_no_attack_and_resumes(
    tmp_path: Path,
) -> None:
    # Arrange: one model-poisoning and one colluding attack, mean and the
    # default robust rule, the 25 % config (8 workers, 2 attackers), trust pass.
    cache = str(tmp_path / "cache")
    flags = ("--attacks", "signflip,alie", "--cache", cache)

    # Act: run into a cache, then report from the cache alone.
    report = run_quick_bench("robustness.py", *flags)
    again = run_quick_bench("robustness.py", *flags, "--only-cached")

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
    report = run_quick_bench("robust_aggregation.py")
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
    report = run_quick_bench("privacy.py", "--epsilons", "8")
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
    report = run_quick_bench("central_dp.py")
    assert report["bench"] == "central_dp"
    row = report["round"]
    assert isinstance(row, dict)
    assert row["off_round_s"] > 0
    assert row["central_round_s"] > 0
    assert 0 < row["noise_stage_share_of_round"] < 1
    assert isinstance(row["goal_noise_stage_le_5pct"], bool)


@pytest.mark.timeout(300)  # two bench invocations of up to 170 s each (run_quick_bench)
def test_heterogeneity_bench_quick_reports_every_cell_gap_and_goal_and_resumes(
    tmp_path: Path,
) -> None:
    # Arrange: the quick grid (every method, iid and dirichlet:0.5, one seed).
    cache = str(tmp_path / "cache")

    # Act: run into a cache, then report from the cache alone.
    report = run_quick_bench("heterogeneity.py", "--cache", cache)
    again = run_quick_bench("heterogeneity.py", "--cache", cache, "--only-cached")

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
    report = run_quick_bench("lora.py")
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
    report = run_quick_bench("dashboard.py")
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
    report = run_quick_bench(
        "heterogeneous.py", "--cache", cache, "--jobs", "2", timeout_s=240
    )
    again = run_quick_bench("heterogeneous.py", "--cache", cache, "--only-cached")

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
    report = run_quick_bench("shards.py", "--shards", "")
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
    report = run_quick_bench("shards.py", "--skip-tree")
    assert "tree" not in report
    runs = report["sharding"]
    assert isinstance(runs, list)
    assert [run["shards"] for run in runs] == [1, 2]
    one, two = (run["per_shard"] for run in runs)
    assert [s["model_version"] for s in one + two] == [2, 2, 2]
    total = sum(s["inbound_mb_per_round"] for s in two)
    assert abs(total - one[0]["inbound_mb_per_round"]) < 1e-2 * total  # rounded
    assert abs(sum(s["range_mb"] for s in two) - one[0]["range_mb"]) < 1e-2
