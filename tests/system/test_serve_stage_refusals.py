"""`fedgrpc serve` refuses stage combinations that cannot work, before it binds.

Each refusal is one line on stderr naming both settings, and a non-zero exit:
a median cannot be taken of a sum the coordinator is only allowed to see
(secure aggregation), nor of a streaming sum that keeps no single update.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers.serve import FEDGRPC

SECURE = ["--secure-aggregation", "--codec", "dense:int8", "--min-clients", "3"]


def _serve(*flags: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FEDGRPC), "serve", "--listen", "127.0.0.1:0", "--open-enrollment",
         "--seed-from-first-client",
         *flags],
        capture_output=True, text=True, timeout=120, cwd=cwd, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "first", "second"),
    [
        (["--aggregator", "median", *SECURE], "aggregator = 'median'",
         "secure_aggregation = true"),
        (["--aggregator", "trimmed_mean", "--accumulator", "streaming_sum"],
         "aggregator = 'trimmed_mean'", "accumulator = 'streaming_sum'"),
        (["--accumulator", "spool", *SECURE], "accumulator = 'spool'",
         "secure_aggregation = true"),
        (["--trust", "on", *SECURE], "trust = 'on'", "secure_aggregation = true"),
        (["--trust", "on", "--accumulator", "streaming_sum"], "trust = 'on'",
         "accumulator = 'streaming_sum'"),
        # Robust rules cannot see single updates under masks: the refusal
        # names both settings and points to the client-side bound.
        (["--aggregator", "krum", *SECURE], "aggregator = 'krum'",
         "ClientConfig(max_update_norm"),
        (["--norm-bound", "3", *SECURE], "norm_bound",
         "ClientConfig(max_update_norm"),
    ],
)  # fmt: skip
def test_serve_exits_non_zero_naming_both_settings_of_an_impossible_pair(
    flags: list[str], first: str, second: str, tmp_path: Path
) -> None:
    done = _serve(*flags, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "fedgrpc serve: error:" in done.stderr
    assert first in done.stderr
    assert second in done.stderr


def test_serve_names_a_plugin_that_does_not_import(tmp_path: Path) -> None:
    done = _serve("--aggregator", "no_such_pkg.rules:Median", cwd=tmp_path)
    assert done.returncode == 2
    assert "aggregator='no_such_pkg.rules:Median'" in done.stderr
    assert "was not found" in done.stderr


def test_trimmed_mean_beta_without_trimmed_mean_is_refused(tmp_path: Path) -> None:
    done = _serve("--trimmed-mean-beta", "0.2", cwd=tmp_path)
    assert done.returncode == 2
    assert "trimmed_mean_beta" in done.stderr
    assert "aggregator = 'trimmed_mean'" in done.stderr


def test_a_trust_threshold_above_the_soft_one_is_refused_by_name(
    tmp_path: Path,
) -> None:
    done = _serve("--trust", "on", "--trust-hard-threshold", "0.7", cwd=tmp_path)
    assert done.returncode == 2
    assert "trust_hard_threshold=0.7" in done.stderr
    assert "trust_soft_threshold" in done.stderr
