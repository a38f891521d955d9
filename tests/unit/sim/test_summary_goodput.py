"""Goodput and busy fraction in the summary, its JSON and its table."""

from __future__ import annotations

import pytest

from fedgrpc.sim.report import format_summary
from fedgrpc.sim.summary import Pace, Participant, RoundFigures, SimulationSummary


def _summary(*paces: Pace) -> SimulationSummary:
    return SimulationSummary(
        clients=len(paces), num_parameters=10,
        rounds=[RoundFigures(1, True, 2.0, 1.0, len(paces))],
        initial_val_loss=3.0, final_val_loss=2.0, bytes_up=1, bytes_down=1,
        wall_s=30.0, train_wall_s=20.0,
        participants=[Participant(i, f"c{i}", None, 1, pace=p)
                      for i, p in enumerate(paces)],
    )  # fmt: skip


def test_goodput_weighs_clients_by_compute_and_busy_is_a_share_of_training_wall() -> (
    None
):
    summary = _summary(
        Pace(speed=1.0, compute_s=4.0, useful_s=4.0, samples=10, tokens=640),
        Pace(speed=4.0, crashes=2, compute_s=16.0, useful_s=8.0, samples=15,
             tokens=960),
    )  # fmt: skip
    figures = summary.as_dict()
    assert figures["goodput"] == pytest.approx(12 / 20)  # not the mean of 1 and 0.5
    assert [p["goodput"] for p in figures["participants"]] == [1.0, 0.5]
    assert [p["busy_fraction"] for p in figures["participants"]] == [0.2, 0.8]
    assert (figures["crashes"], figures["samples"], figures["tokens"]) == (2, 25, 1600)
    table = format_summary(summary)
    assert "60.0% of 20.0 s client compute" in table
    assert "speed x4, goodput 50.0%, busy 80%, 2 crash(es)" in table


def test_a_plain_run_gets_goodput_but_no_per_client_rows() -> None:
    table = format_summary(_summary(Pace(compute_s=2.0, useful_s=2.0)))
    assert "100.0% of 2.0 s client compute" in table
    assert "speed x" not in table
    assert _summary(Pace()).goodput == 0.0  # no compute: nothing to share out
