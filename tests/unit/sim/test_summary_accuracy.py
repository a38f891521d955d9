"""The summary's per-round validation figures, in --json and in the table."""

from __future__ import annotations

from fedgrpc.sim.report import format_summary
from fedgrpc.sim.summary import RoundFigures, SimulationSummary


def _summary(evaluations: list[dict[str, float]], task: str) -> SimulationSummary:
    return SimulationSummary(
        clients=2, num_parameters=10, rounds=[RoundFigures(1, True, 0.5, 1.0, 2),
                                              RoundFigures(2, True, 0.3, 1.0, 2)],
        initial_val_loss=2.3, final_val_loss=0.2, bytes_up=1, bytes_down=1,
        wall_s=1.0, task=task, partition="dirichlet:0.3", client_sizes=[700, 737],
        evaluations=evaluations,
    )  # fmt: skip


def test_digits_summary_reports_accuracy_per_round_and_in_the_table() -> None:
    evaluations = [
        {"model_version": 0, "val_loss": 2.3, "val_accuracy": 0.1},
        {"model_version": 1, "val_loss": 0.9, "val_accuracy": 0.95},
        {"model_version": 2, "val_loss": 0.2, "val_accuracy": 0.9},
    ]
    summary = _summary(evaluations, "digits")

    figures = summary.as_dict()
    table = format_summary(summary)

    assert figures["val_accuracy_per_round"] == [0.95, 0.9]
    assert figures["val_loss_per_round"] == [0.9, 0.2]
    assert (figures["initial_val_accuracy"], figures["final_val_accuracy"]) == (
        0.1,
        0.9,
    )
    assert figures["partition"] == "dirichlet:0.3"
    assert figures["client_sizes"] == [700, 737]
    assert "10.0% -> 90.0% (best round 95.0%)" in table
    assert "digits, dirichlet:0.3" in table


def test_charlm_summary_has_loss_per_round_and_no_accuracy() -> None:
    evaluations = [{"model_version": 0, "val_loss": 5.5},
                   {"model_version": 1, "val_loss": 3.0}]  # fmt: skip
    summary = _summary(evaluations, "charlm")

    figures = summary.as_dict()

    assert figures["val_loss_per_round"] == [3.0]
    assert "final_val_accuracy" not in figures
    assert "validation accuracy" not in format_summary(summary)
