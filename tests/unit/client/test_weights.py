"""LocalRun: the pseudo-gradient's sign, in-place loads, dtype preservation."""

from __future__ import annotations

import torch
from torch import nn

from fedgrpc.client.weights import LocalRun
from fedgrpc.wire.tensors import flatten_fp32, pack_native


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fp16 = nn.Parameter(torch.randn(3, 2).to(torch.float16))
        self.bf16 = nn.Parameter(torch.randn(4).to(torch.bfloat16))
        self.fp64 = nn.Parameter(torch.randn(2, 2, dtype=torch.float64))
        self.scalar = nn.Parameter(torch.tensor(0.5))


def test_pseudo_gradient_is_snapshot_minus_local() -> None:
    model = nn.Linear(3, 2)
    local = LocalRun(model)
    snapshot = local.local_weights().clone()
    with torch.no_grad():
        model.weight.add_(0.25)

    delta = local.pseudo_gradient()

    expected = snapshot - flatten_fp32(list(model.parameters()), local.spec)
    torch.testing.assert_close(delta, expected)
    assert delta.data_ptr() == local.delta.data_ptr()  # no new buffer
    weight_part = delta[: model.weight.numel()]
    torch.testing.assert_close(weight_part, torch.full_like(weight_part, -0.25))


def test_load_copies_in_place_and_keeps_dtypes() -> None:
    torch.manual_seed(0)
    model = Mixed()
    local = LocalRun(model)
    before = {name: p.data_ptr() for name, p in model.named_parameters()}
    target = torch.linspace(-1, 1, local.spec.num_coordinates)
    native = pack_native(target, local.spec)

    local.load(native, version=7)

    for name, param in model.named_parameters():
        assert param.data_ptr() == before[name], name
    assert model.fp16.dtype == torch.float16
    assert model.bf16.dtype == torch.bfloat16
    assert model.fp64.dtype == torch.float64
    assert model.scalar.shape == ()
    expected_snapshot = flatten_fp32(list(model.parameters()), local.spec)
    torch.testing.assert_close(local.snapshot, expected_snapshot)
    assert local.base_version == 7


def test_record_keeps_samples_and_mean_loss_until_the_next_load() -> None:
    local = LocalRun(nn.Linear(2, 1))
    local.record(1.0, 4)
    local.record(None, 4)
    local.record(3.0, 2)

    assert local.samples == 10
    assert local.loss_mean == 2.0

    local.load(pack_native(torch.zeros(3), local.spec), version=1)

    assert (local.samples, local.loss_mean) == (0, 0.0)


def test_diverged_local_model_is_refused_before_sending() -> None:
    import pytest

    from fedgrpc.errors import InvalidUpdateError

    model = torch.nn.Linear(3, 2)
    local = LocalRun(model)
    with torch.no_grad():
        model.weight[0, 1] = float("nan")
    with pytest.raises(InvalidUpdateError, match="diverged"):
        local.pseudo_gradient()
