"""`select_tensors`: which of a model's tensors travel, and the spec they make."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedgrpc.client.tensors import select_tensors
from fedgrpc.client.weights import LocalRun
from fedgrpc.config import ClientConfig
from fedgrpc.domain.model_spec import (
    DType,
    ModelSpec,
    TensorSpec,
    spec_from_rows,
    spec_rows,
)
from fedgrpc.errors import ConfigError, ModelMismatchError
from fedgrpc.wire.tensors import pack_native, spec_from_module


class WithState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(2, 2).requires_grad_(False)
        self.linear = nn.Linear(2, 3)
        self.norm = nn.BatchNorm1d(3)
        self.register_buffer("mask", torch.ones(3, dtype=torch.bool))
        self.register_buffer("cache", torch.zeros(5), persistent=False)


def test_defaults_send_trainable_parameters_then_numeric_persistent_buffers() -> None:
    selected = select_tensors(WithState(), ClientConfig())

    names = [(t.name, t.dtype, t.buffer) for t in selected.spec.tensors]
    assert names == [
        ("linear.weight", DType.FLOAT32, False),
        ("linear.bias", DType.FLOAT32, False),
        ("norm.weight", DType.FLOAT32, False),
        ("norm.bias", DType.FLOAT32, False),
        ("norm.running_mean", DType.FLOAT32, True),
        ("norm.running_var", DType.FLOAT32, True),
        ("norm.num_batches_tracked", DType.INT64, True),
    ]
    # The bool mask cannot be averaged; the non-persistent cache is not state.
    assert set(selected.local) == {"frozen.weight", "frozen.bias", "mask"}
    assert len(selected.parameters) == 4


def test_all_a_function_and_local_buffers_choose_differently() -> None:
    model = WithState()

    everything = select_tensors(model, ClientConfig(federate="all", buffers="local"))
    only_weights = select_tensors(
        model, ClientConfig(federate=lambda name, _: name.endswith("weight"))
    )

    assert [t.name for t in everything.spec.tensors][:2] == [
        "frozen.weight", "frozen.bias",
    ]  # fmt: skip
    assert not any(t.buffer for t in everything.spec.tensors)
    params = [t.name for t in only_weights.spec.tensors if not t.buffer]
    assert params == ["frozen.weight", "linear.weight", "norm.weight"]


def test_a_parameter_only_spec_keeps_the_digest_older_clients_compute() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))

    selected = select_tensors(model, ClientConfig())

    assert selected.spec.digest == spec_from_module(model).digest


def test_buffers_change_the_digest_so_disagreeing_clients_are_caught() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))

    averaged = select_tensors(model, ClientConfig())
    local = select_tensors(model, ClientConfig(buffers="local"))

    assert averaged.spec.digest != local.spec.digest


def test_bad_sharing_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="federate"):
        ClientConfig(federate="frozen")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="buffers"):
        ClientConfig(buffers="sum")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="local_modules"):
        ClientConfig(local_modules=["head"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no parameter of the model would travel"):
        select_tensors(nn.Linear(2, 2).requires_grad_(False), ClientConfig())


def test_a_cast_load_sends_no_rounding_back_as_a_change() -> None:
    model = nn.Linear(3, 2).to(torch.bfloat16)
    local = LocalRun(model)
    federation = ModelSpec(
        tuple(
            TensorSpec(t.name, t.shape, DType.FLOAT32, t.buffer)
            for t in local.spec.tensors
        )
    )
    local.adopt_wire_spec(federation)
    master = torch.full((federation.num_coordinates,), 0.1001)  # not a bf16 value

    local.load(pack_native(master, federation), version=1)

    assert local.downlink.numel() == federation.num_coordinates * 4
    assert int(torch.count_nonzero(local.pseudo_gradient())) == 0
    expected = master[:6].view(2, 3).to(torch.bfloat16)
    assert torch.equal(model.weight.detach(), expected)


def test_a_federation_of_another_architecture_is_not_a_cast() -> None:
    local = LocalRun(nn.Linear(3, 2))
    other = LocalRun(nn.Linear(3, 3)).spec

    with pytest.raises(ModelMismatchError, match="'weight'"):
        local.adopt_wire_spec(other)


def test_spec_rows_round_trip_buffers_and_aliases_for_checkpoints() -> None:
    spec = ModelSpec(
        (
            TensorSpec("embed.weight", (4, 2), DType.FLOAT32),
            TensorSpec("norm.num_batches_tracked", (), DType.INT64, buffer=True),
        ),
        (("lm_head.weight", "embed.weight"),),
    )

    rows = spec_rows(spec)
    again = spec_from_rows(rows, [list(pair) for pair in spec.aliases])

    assert rows[0] == ["embed.weight", [4, 2], "float32"]  # the old 3-field row
    assert again == spec
    assert again.digest == spec.digest


def test_the_frozen_digest_covers_the_frozen_base_but_not_local_modules() -> None:
    def model(base: float, head: float) -> nn.Module:
        stem, body, personal = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)
        stem.requires_grad_(False)
        personal.requires_grad_(False)
        with torch.no_grad():
            stem.weight.fill_(base)
            stem.bias.fill_(base)
            personal.weight.fill_(head)
        return nn.Sequential(stem, body, personal).to(torch.bfloat16)

    config = ClientConfig(local_modules=("2",))

    def digest(m: nn.Module) -> bytes:
        return select_tensors(m, config).frozen_digest()

    assert len(digest(model(1.0, 5.0))) == 32
    assert digest(model(1.0, 5.0)) == digest(model(1.0, 6.0))  # personal: free
    assert digest(model(1.0, 5.0)) != digest(model(2.0, 5.0))  # the base: checked
    assert select_tensors(nn.Linear(2, 2), ClientConfig()).frozen_digest() == b""
