"""`fedgrpc serve` refuses to start without an initial model, saying which to pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system
FEDGRPC = Path(sys.executable).with_name("fedgrpc")


def _serve(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FEDGRPC), "serve", "--listen", "127.0.0.1:0", "--open-enrollment", *flags],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_serve_without_init_model_or_seeding_flag_refuses_naming_both() -> None:
    result = _serve()

    assert result.returncode == 2
    assert "no initial model" in result.stderr
    assert "--init-model" in result.stderr
    assert "--seed-from-first-client" in result.stderr


def test_serve_with_a_file_that_is_not_a_model_refuses_naming_init_model(
    tmp_path: Path,
) -> None:
    junk = tmp_path / "model.safetensors"
    junk.write_text("definitely not tensors\n" * 4)

    result = _serve("--init-model", str(junk))

    assert result.returncode == 2
    assert "init_model=" in result.stderr
    assert "neither a safetensors file nor a fedgrpc checkpoint" in result.stderr
