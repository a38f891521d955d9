"""Crash draws, the --speeds/--crash-rate checks, and the goodput ledger."""

from __future__ import annotations

import time

import pytest

from fedgrpc.errors import ConfigError
from fedgrpc.sim.churn import (
    CrashSchedule,
    check_crash_rate,
    check_speeds,
    crash_draw,
    crashes_at,
    parse_speeds,
    planned_crashes,
)
from fedgrpc.sim.config import SimulationConfig
from fedgrpc.sim.pace import ComputeLedger, merge_incarnations


def test_crash_draws_depend_only_on_seed_client_and_attempt() -> None:
    draws = [crash_draw(3, 1, a) for a in range(200)]
    assert draws == [crash_draw(3, 1, a) for a in range(200)]
    assert draws != [crash_draw(4, 1, a) for a in range(200)]
    assert draws != [crash_draw(3, 2, a) for a in range(200)]
    assert all(0 <= u < 1 for u in draws)
    # Uniform: about P of them fall below P.
    assert 0.15 < sum(u < 0.25 for u in draws) / len(draws) < 0.35


def test_planned_crashes_replays_the_workers_draws_until_every_round_completes() -> (
    None
):
    seed, client, rounds, rate, bound = 2, 0, 2, 0.5, 10
    crashes, completed, attempt = 0, 0, 0
    while completed < rounds:  # what a worker and its restarts do in sync rounds
        if crashes_at(seed, client, attempt, rate, bound - crashes):
            crashes += 1
        else:
            completed += 1
        attempt += 1
    assert planned_crashes(seed, client, rounds, rate, bound) == crashes == 3
    assert planned_crashes(seed, client, rounds, rate, 1) == 1  # the bound
    assert planned_crashes(seed, client, rounds, 0.0, bound) == 0


def test_no_crash_once_the_restarts_ran_out() -> None:
    attempt = next(a for a in range(100) if crash_draw(0, 0, a) < 0.5)
    assert crashes_at(0, 0, attempt, 0.5, restarts_left=1)
    assert not crashes_at(0, 0, attempt, 0.5, restarts_left=0)


def test_speeds_parse_and_must_be_one_finite_factor_at_least_1_per_client() -> None:
    assert parse_speeds("1, 1,2,4.5") == (1.0, 1.0, 2.0, 4.5)
    check_speeds((), 4)  # default: everyone at full speed
    check_speeds((1.0, 1.0, 2.0, 4.0), 4)
    with pytest.raises(ConfigError, match=r"'x' is not a number"):
        parse_speeds("1,x")
    with pytest.raises(ConfigError, match=r"has 5 factor\(s\) for 4 clients"):
        check_speeds((1.0,) * 5, 4)
    with pytest.raises(ConfigError, match=r"client 2's factor 0.9 is invalid"):
        check_speeds((1.0, 1.0, 0.9), 3)
    with pytest.raises(ConfigError, match=r"factor nan is invalid"):
        check_speeds((float("nan"),), 1)


def test_crash_rate_must_be_a_probability_below_1() -> None:
    check_crash_rate(0.0, 0)
    check_crash_rate(0.99, 10)
    for bad in (1.0, -0.01, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=r"expected a probability 0 <= P < 1"):
            check_crash_rate(bad, 10)
    with pytest.raises(ConfigError, match=r"--max-restarts -2 is invalid"):
        check_crash_rate(0.1, -2)
    with pytest.raises(ConfigError, match=r"--speeds has 1 factor"):
        SimulationConfig(clients=2, speeds=(2.0,))


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_step_at_speed_3_takes_three_times_its_compute() -> None:
    ledger = ComputeLedger(speed=3.0)
    started = time.perf_counter()
    _busy(0.02)
    ledger.timed_step(started, samples=32, tokens=2048)
    wall = time.perf_counter() - started
    assert 0.06 <= ledger.compute_s <= wall
    assert wall < 0.2  # (f - 1) x t of sleep, not more
    assert (ledger.steps, ledger.samples, ledger.tokens) == (1, 32, 2048)


def test_only_rounds_that_applied_count_as_useful() -> None:
    ledger = ComputeLedger()
    # A streaming fragment in flight settles at its merge, with the outcome.
    for outcome in ("applied", "skipped", "in_flight", "applied"):
        ledger.timed_step(time.perf_counter() - 1.0, 1, 1)  # a 1 s step
        ledger.settle(outcome)
    ledger.timed_step(time.perf_counter() - 1.0, 1, 1)  # open round: a crash
    figures = ledger.figures()
    assert figures["compute_s"] == pytest.approx(5.0, abs=0.05)
    assert figures["useful_s"] == pytest.approx(3.0, abs=0.05)


def test_incarnations_sum_counts_and_keep_the_first_initial_score() -> None:
    crashed = [{"compute_s": 2.0, "useful_s": 1.0, "outcome_applied": 1.0,
                "initial_val_loss": 5.5, "attempt": 1.0}]  # fmt: skip
    done = {"compute_s": 3.0, "useful_s": 3.0, "outcome_applied": 2.0,
            "initial_val_loss": 4.0, "final_val_loss": 3.0,
            "train_samples": 9.0}  # fmt: skip
    merged = merge_incarnations(crashed, done)
    assert merged == {
        "compute_s": 5.0, "useful_s": 4.0, "outcome_applied": 3.0,
        "initial_val_loss": 5.5, "final_val_loss": 3.0, "train_samples": 9.0,
    }  # fmt: skip
    assert merge_incarnations([], done) == done


def test_a_schedule_draws_once_per_sync_point_and_stops_at_the_crash() -> None:
    seed, rate = 2, 0.5
    first = next(a for a in range(100) if crashes_at(seed, 1, a, rate, 1))
    schedule = CrashSchedule(seed, 1, rate, restarts_left=1)
    steps = [schedule.crash_now(at_sync_point=(i + 1) % 3 == 0)
             for i in range(3 * (first + 1))]  # fmt: skip
    # Only the last step of sync point `first` (0-based) is a crash.
    assert steps == [False] * (3 * (first + 1) - 1) + [True]
    assert schedule.attempt == first
