"""Evaluations on the time and token axes: `ComputeLedger.mark`, `stamp_evaluations`."""

from __future__ import annotations

import pytest

from fedgrpc.sim.pace import ComputeLedger
from fedgrpc.sim.timeline import stamp_evaluations


def test_marks_are_deltas_so_a_restarted_process_adds_to_its_predecessor() -> None:
    # Arrange: one process marks twice, dies; its restart starts at 0 tokens.
    first = ComputeLedger()
    first.tokens = 100
    mark_a = first.mark(10.0)
    first.tokens = 250
    mark_b = first.mark(11.0)
    restarted = ComputeLedger()
    restarted.tokens = 40

    # Act
    mark_c = restarted.mark(12.0)

    # Assert: what each mark adds, never a total that would replace another.
    assert [mark_a, mark_b, mark_c] == [
        {"at": 10.0, "tokens": 100.0},
        {"at": 11.0, "tokens": 150.0},
        {"at": 12.0, "tokens": 40.0},
    ]
    assert first.mark(13.0)["tokens"] == 0.0  # nothing new since the last mark


def test_each_evaluation_gets_seconds_since_the_gate_and_every_clients_tokens() -> None:
    # Arrange: the gate opens at t = 100; two clients mark out of order.
    gate = 100.0
    marks = [
        {"at": 105.0, "tokens": 30.0},  # client 1, round 1
        {"at": 104.0, "tokens": 10.0},  # client 0, round 1 (arrived later)
        {"at": 109.0, "tokens": 20.0},  # client 0, round 2
        {"at": 112.0, "tokens": 5.0},  # client 1's end
    ]
    evaluations = [
        {"model_version": 0.0, "val_loss": 5.5, "at": 99.0},  # at Join
        {"model_version": 1.0, "val_loss": 3.0, "at": 105.0},  # same instant
        {"model_version": 2.0, "val_loss": 2.5, "at": 110.0},
    ]

    # Act
    stamped = stamp_evaluations(evaluations, marks, gate)

    # Assert: `at` became elapsed_s; tokens are the marks up to and at `at`.
    assert stamped == [
        {"model_version": 0.0, "val_loss": 5.5, "elapsed_s": 0.0, "tokens": 0.0},
        {"model_version": 1.0, "val_loss": 3.0, "elapsed_s": 5.0, "tokens": 40.0},
        {"model_version": 2.0, "val_loss": 2.5, "elapsed_s": 10.0, "tokens": 60.0},
    ]
    assert "at" in evaluations[0]  # the inbox's records are left as they were


def test_evaluations_without_a_time_are_returned_unstamped() -> None:
    evaluations = [{"model_version": 0.0, "val_loss": 5.5}]
    assert stamp_evaluations(evaluations, [{"at": 1.0, "tokens": 3.0}], 0.0) == (
        evaluations
    )
    assert stamp_evaluations([], [], 0.0) == []


def test_no_marks_yet_means_no_tokens() -> None:
    stamped = stamp_evaluations([{"val_loss": 1.0, "at": 3.5}], [], 1.0)
    assert stamped[0]["tokens"] == 0.0
    assert stamped[0]["elapsed_s"] == pytest.approx(2.5)
