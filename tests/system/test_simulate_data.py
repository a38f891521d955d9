"""`fedgrpc simulate --task digits` and `--partition` end to end (real processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

FEDGRPC = Path(sys.executable).with_name("fedgrpc")
SVG = "{http://www.w3.org/2000/svg}"
pytestmark = pytest.mark.system


def _simulate(*flags: str, timeout: float = 170) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FEDGRPC), "simulate", "--json", "--no-progress", *flags],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_digits_under_label_skew_reports_global_accuracy_every_round(
    tmp_path: Path,
) -> None:
    # Arrange: 3 clients, Dirichlet(0.5) over the digits, the split plotted.
    plot = tmp_path / "split.svg"

    # Act
    result = _simulate("--task", "digits", "--clients", "3", "--rounds", "4",
                       "--inner-steps", "20", "--partition", "dirichlet:0.5",
                       "--partition-plot", str(plot))  # fmt: skip

    # Assert: accuracy of the global model after each round, rising.
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["task"], summary["partition"]) == ("digits", "dirichlet:0.5")
    assert summary["rounds_applied"] == 4
    accuracy = summary["val_accuracy_per_round"]
    assert len(accuracy) == len(summary["val_loss_per_round"]) == 4
    assert summary["initial_val_accuracy"] < 0.3  # 10 classes: ~chance
    assert summary["final_val_accuracy"] == accuracy[-1] > 0.8
    assert [e["model_version"] for e in summary["evaluations"]] == [0, 1, 2, 3, 4]
    assert sum(summary["client_sizes"]) == 1437  # the training split, all of it
    # What the launcher printed is what each client process computed.
    rows = [line.split() for line in result.stderr.splitlines()
            if line.startswith("client ") and line.split()[1].isdigit()]  # fmt: skip
    header, *clients = rows  # "client 0 1 ... 9 size H(nats)", then a row per client
    assert header[-2:] == ["size", "H(nats)"]
    assert [int(row[-2]) for row in clients] == summary["client_sizes"]
    # The split was printed first, and plotted: 3 x 10 cells and 3 size bars.
    assert "partition dirichlet:0.5 over 3 clients, 10 labels" in result.stderr
    assert "validation accuracy (start -> end)" in result.stderr
    assert len(ET.parse(plot).getroot().findall(f"{SVG}rect")) == 3 * 10 + 3


def test_charlm_under_package_skew_trains_and_reports_loss_per_round() -> None:
    result = _simulate("--clients", "2", "--rounds", "2", "--inner-steps", "5",
                       "--partition", "dirichlet:0.3",
                       "--corpus-bytes", "2000000")  # fmt: skip

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["task"], summary["partition"]) == ("charlm", "dirichlet:0.3")
    assert len(summary["val_loss_per_round"]) == 2
    assert summary["final_val_loss"] < summary["initial_val_loss"]
    assert "final_val_accuracy" not in summary  # the char-LM has no accuracy
    assert "label" in result.stderr  # 6 packages: the table has a row per label
    assert "asyncio" in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--partition", "dirichlet:-1"), "alpha=-1.0 is invalid"),
        (("--partition", "zipf:2"), "unknown kind 'zipf'"),
        (("--task", "mnist"), "invalid choice: 'mnist'"),
        (("--task", "digits", "--attack", "backdoor:0.25"), "poisons char-LM batches"),
        (("--task", "digits", "--clients", "100", "--partition", "dirichlet:0.01"),
         "raise alpha, use fewer clients"),
        (("--task", "digits", "--partition-plot", "/nonexistent/dir/x.svg"),
         "--partition-plot /nonexistent/dir/x.svg: cannot write it"),
    ],
)  # fmt: skip
def test_bad_task_and_partition_flags_fail_naming_the_problem(
    flags: tuple[str, ...], message: str
) -> None:
    result = _simulate(*flags, timeout=120)

    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""  # nothing ran
