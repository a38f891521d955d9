"""`client/lora_tiny_llm.py` as a user runs it: LoRA federated, adapter saved.

One process (its own coordinator, two clients on threads), then the saved
adapters are loaded back with `PeftModel.from_pretrained` on the example's
base model, as its docstring tells a user to.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import peft
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "client" / "lora_tiny_llm.py"
ROUNDS = 2
pytestmark = pytest.mark.system


def _example_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lora_tiny_llm", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_lora_clients_send_only_the_adapter_and_save_one_global_adapter(
    tmp_path: Path,
) -> None:
    # Act: the example, self-contained, small.
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--rounds", str(ROUNDS), "--inner-steps", "3",
         "--corpus-bytes", "200000", "--out", str(tmp_path / "adapter")],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(line) for line in result.stdout.strip().splitlines()]

    # Assert: only the adapter travelled, every round, both ways.
    assert len(summaries) == 2
    for summary in summaries:
        adapter_bytes = summary["adapter_params"] * 4
        assert summary["rounds"] == summary["model_version"] == ROUNDS
        assert summary["bytes_received"] == (1 + ROUNDS) * adapter_bytes
        assert summary["adapter_params"] < 0.05 * summary["model_params"]
    # The global model's validation loss, the same for both, went down.
    first, second = (s["val_loss"] for s in summaries)
    assert first == second
    assert first[str(ROUNDS)] < first["0"]
    # Both saved the same global adapter; PEFT loads it onto the base model.
    example = _example_module()
    loaded = [
        peft.PeftModel.from_pretrained(example.base_model(), s["adapter_dir"])
        for s in summaries
    ]
    states = [{k: v for k, v in m.state_dict().items() if "lora_" in k} for m in loaded]
    assert states[0].keys() == states[1].keys()
    assert len(states[0]) == 2 * 4 * 2  # 2 layers x q, k, v, o x (A, B)
    for key, tensor in states[0].items():
        assert torch.equal(tensor, states[1][key]), key
    assert any(bool(t.abs().sum() > 0) for k, t in states[0].items() if "lora_B" in k)
