"""`fedgrpc export`: a checkpoint's model as a torch or safetensors state_dict."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from fedgrpc.cli import main
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.runtime import CoordinatorRuntime
from fedgrpc.wire.tensors import flatten_fp32, spec_from_module


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3)
        self.bf16 = nn.Parameter(torch.randn(4, 2).to(torch.bfloat16))
        self.wide = nn.Parameter(torch.randn(5, dtype=torch.float64))
        self.scalar = nn.Parameter(torch.tensor(0.25))
        self.register_buffer("steps", torch.zeros(1))  # not federated


def _checkpoint(directory: Path, model: nn.Module) -> None:
    """A real coordinator checkpoint holding `model`'s weights as version 0."""
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        checkpoint_dir=str(directory),
    )
    runtime = CoordinatorRuntime(config)
    spec = spec_from_module(model)
    runtime.engine.model.adopt_spec(spec)
    runtime.engine.model.seed(flatten_fp32(list(model.parameters()), spec))
    runtime.engine._open_round()
    asyncio.run(runtime.save_checkpoint())
    runtime.checkpoints.close()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_export_loads_into_the_model_with_dtypes_kept(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange
    torch.manual_seed(0)
    model = Mixed()
    _checkpoint(tmp_path / "ckpt", model)
    out = tmp_path / "out" / f"model{suffix}"

    # Act
    code = main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(out),
                 "--dtype", "native"])  # fmt: skip

    # Assert: the reference readers load it, and it fits the model.
    assert code == 0
    assert f"wrote {out}" in capsys.readouterr().out
    state = load_file(out) if suffix != ".pt" else torch.load(out, weights_only=True)
    expected = dict(model.named_parameters())
    assert state.keys() == expected.keys()
    for name, tensor in state.items():
        assert tensor.dtype == expected[name].dtype, name
        assert tensor.shape == expected[name].shape, name
        # float64 went through the float32 master copy
        reference = expected[name].detach().float().to(tensor.dtype)
        torch.testing.assert_close(tensor, reference, rtol=0, atol=0)
    restored = Mixed()
    missing, unexpected = restored.load_state_dict(state, strict=False)
    assert (missing, unexpected) == (["steps"], [])


def test_export_defaults_to_the_float32_master_and_casts_on_request(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = Mixed()
    _checkpoint(tmp_path / "ckpt", model)

    main(
        [
            "export",
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--out",
            str(tmp_path / "a.pt"),
        ]
    )
    ckpt = str(tmp_path / "ckpt")
    main(["export", "--checkpoint", ckpt, "--out", str(tmp_path / "b.pt"),
          "--dtype", "bfloat16"])  # fmt: skip

    master = torch.load(tmp_path / "a.pt", weights_only=True)
    cast = torch.load(tmp_path / "b.pt", weights_only=True)
    assert {t.dtype for t in master.values()} == {torch.float32}
    assert {t.dtype for t in cast.values()} == {torch.bfloat16}
    torch.testing.assert_close(master["wide"], model.wide.detach().float())


def test_export_with_an_unknown_dtype_is_refused_by_argparse(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", "x", "--out", "y.pt", "--dtype", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_export_of_a_single_file_and_explicit_format(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    _checkpoint(tmp_path, model)
    out = tmp_path / "model.bin"

    code = main(
        ["export", "--checkpoint", str(tmp_path / "round-0.ckpt"), "--out", str(out),
         "--format", "safetensors"]
    )  # fmt: skip

    assert code == 0
    torch.testing.assert_close(load_file(out)["weight"], model.weight.detach())


def test_export_without_a_checkpoint_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["export", "--checkpoint", str(tmp_path), "--out", "x.pt"])

    assert code == 2
    assert "no intact round-<N>.ckpt checkpoint in" in capsys.readouterr().err
