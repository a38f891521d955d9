"""`init_model`: the coordinator's initial weights from a file, checked at start.

Every unusable file stops the coordinator with a `ConfigError` naming
`init_model`; a joiner's model must match the file by name, shape and dtype,
whatever order its parameters come in.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.ops import init_model_file
from fedgrpc.coordinator.ops.init_model_file import load_init_model
from fedgrpc.coordinator.rounds import initial_model
from fedgrpc.coordinator.runtime import CoordinatorRuntime
from fedgrpc.domain.fragments import Fragment
from fedgrpc.errors import ConfigError, ModelMismatchError
from fedgrpc.wire.tensors import flatten_fp32, spec_from_module


def _save(path: Path, module: nn.Module) -> Path:
    save_file({n: p.detach() for n, p in module.named_parameters()}, str(path))
    return path


def test_a_safetensors_file_matches_a_model_whose_parameters_come_in_another_order(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    initial = load_init_model(str(_save(tmp_path / "m.safetensors", source)))
    spec = spec_from_module(source)  # weight before bias; the file sorts by name
    assert [t.name for t in initial.spec.tensors] != [t.name for t in spec.tensors]

    initial.check_matches(spec)
    coordinates = initial.coordinates(spec)

    expected = flatten_fp32(list(source.parameters()), spec)
    assert torch.equal(coordinates, expected)


@pytest.mark.parametrize(
    ("other", "named"),
    [
        (
            nn.Linear(3, 4),
            "tensor 'weight' is [4, 3] float32 but the coordinator's initial model",
        ),
        (nn.Linear(3, 2, bias=False), "has tensor 'bias', which the model lacks"),
    ],
)
def test_a_different_model_is_a_mismatch_naming_the_first_differing_tensor(
    tmp_path: Path, other: nn.Module, named: str
) -> None:
    initial = load_init_model(str(_save(tmp_path / "m.safetensors", nn.Linear(3, 2))))

    with pytest.raises(ModelMismatchError, match=re.escape(named)):
        initial.check_matches(spec_from_module(other))


def test_a_bfloat16_joiner_of_a_float32_file_makes_a_float32_federation(
    tmp_path: Path,
) -> None:
    initial = load_init_model(str(_save(tmp_path / "m.safetensors", nn.Linear(3, 2))))
    joiner = spec_from_module(nn.Linear(3, 2).to(torch.bfloat16))

    initial.check_matches(joiner)
    federation = initial.federation_spec(joiner)

    assert {t.dtype.torch_name for t in joiner.tensors} == {"bfloat16"}
    assert {t.dtype.torch_name for t in federation.tensors} == {"float32"}
    assert [t.name for t in federation.tensors] == [t.name for t in joiner.tensors]


def test_an_unknown_tensor_is_a_mismatch_naming_it(tmp_path: Path) -> None:
    initial = load_init_model(str(_save(tmp_path / "m.safetensors", nn.Linear(3, 2))))
    renamed = nn.Sequential(nn.Linear(3, 2))

    with pytest.raises(
        ModelMismatchError, match=r"'0\.weight' is not in the coordinator's initial"
    ):
        initial.check_matches(spec_from_module(renamed))


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({}, "holds no tensors"),
        ({"w": torch.zeros(0)}, "no elements"),
        ({"w": torch.ones(2), "mask": torch.zeros(1, dtype=torch.bool)},
         "tensor 'mask' is bool; only float16"),
        ({"w": torch.tensor([1.0, float("nan")])}, "'w' has NaN or infinite values"),
    ],
)  # fmt: skip
def test_unusable_safetensors_contents_are_config_errors_naming_init_model(
    tmp_path: Path, tensors: dict[str, torch.Tensor], message: str
) -> None:
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))

    with pytest.raises(ConfigError, match=rf"init_model=.*{re.escape(message)}"):
        load_init_model(str(path))


def test_a_file_that_is_neither_safetensors_nor_a_checkpoint_says_what_to_pass(
    tmp_path: Path,
) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"not a model at all" * 10)

    with pytest.raises(ConfigError, match="neither a safetensors file nor a fedgrpc"):
        load_init_model(str(path))


def test_a_missing_file_is_refused_when_the_config_is_built(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"init_model=.*an existing safetensors"):
        CoordinatorConfig(init_model=str(tmp_path / "absent.safetensors"))


def test_init_model_and_first_client_seeding_are_exclusive(tmp_path: Path) -> None:
    path = _save(tmp_path / "m.safetensors", nn.Linear(3, 2))

    with pytest.raises(ConfigError, match=r"seed_from_first_client.*init_model"):
        CoordinatorConfig(init_model=str(path), seed_from_first_client=True)


def test_without_any_initial_model_the_coordinator_refuses_to_start() -> None:
    config = CoordinatorConfig(open_enrollment=True)

    with pytest.raises(ConfigError) as refused:
        CoordinatorRuntime(config)

    message = str(refused.value)
    assert "--init-model" in message
    assert "--seed-from-first-client" in message


def test_a_checkpoint_lends_its_weights_to_a_new_run(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = nn.Linear(3, 2)
    spec = spec_from_module(model)
    first = CoordinatorRuntime(
        CoordinatorConfig(open_enrollment=True, seed_from_first_client=True,
                          checkpoint_dir=str(tmp_path / "ckpt"))
    )  # fmt: skip
    first.engine.model.adopt_spec(spec)
    first.engine.model.seed(flatten_fp32(list(model.parameters()), spec))
    first.engine._open_round()
    asyncio.run(first.save_checkpoint())
    first.checkpoints.close()

    runtime = CoordinatorRuntime(
        CoordinatorConfig(open_enrollment=True, init_model=str(tmp_path / "ckpt"))
    )
    created = runtime.engine.adopt_spec(spec)

    assert created  # version 0 exists at the first Join, and round 1 is open
    assert runtime.engine.current is not None
    assert runtime.engine.current.round_id == 1
    assert torch.equal(
        runtime.engine.model.require_master(),
        flatten_fp32(list(model.parameters()), spec),
    )
    assert runtime.run.run_id != first.run.run_id  # a new run, not a resume


@pytest.mark.parametrize("pieces_of", [4, 1 << 22])
@pytest.mark.parametrize("kind", ["safetensors", "checkpoint"])
def test_a_shard_reads_only_its_range_of_the_initial_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, pieces_of: int
) -> None:
    # A shard's range may start and end inside a tensor's row; tiny pieces
    # make every part cross several reads.
    monkeypatch.setattr(initial_model, "PIECE_ELEMENTS", pieces_of)
    monkeypatch.setattr(init_model_file, "PIECE_ELEMENTS", pieces_of)
    torch.manual_seed(2)
    source = nn.Sequential(nn.Linear(7, 5), nn.Linear(5, 3))
    spec = spec_from_module(source)
    if kind == "safetensors":
        path = _save(tmp_path / "m.safetensors", source)
    else:
        path = tmp_path / "ckpt"
        _checkpoint_of(source, path)
    initial = load_init_model(str(path))
    whole = flatten_fp32(list(source.parameters()), spec)

    for start, stop in [(0, 58), (9, 31), (38, 40), (40, 58)]:
        held = Fragment(0, start, stop, 4 * start, 4 * stop)
        assert torch.equal(initial.coordinates(spec, held), whole[start:stop])
    assert torch.equal(initial.coordinates(spec), whole)


def _checkpoint_of(model: nn.Module, directory: Path) -> None:
    """A real coordinator checkpoint of `model`'s weights (version 0)."""
    spec = spec_from_module(model)
    runtime = CoordinatorRuntime(
        CoordinatorConfig(open_enrollment=True, seed_from_first_client=True,
                          checkpoint_dir=str(directory))
    )  # fmt: skip
    runtime.engine.model.adopt_spec(spec)
    runtime.engine.model.seed(flatten_fp32(list(model.parameters()), spec))
    runtime.engine._open_round()
    asyncio.run(runtime.save_checkpoint())
    runtime.checkpoints.close()


def test_nan_in_a_later_piece_of_a_tensor_is_still_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(init_model_file, "PIECE_ELEMENTS", 4)
    weights = torch.zeros(3, 5)
    weights[2, 4] = float("inf")  # the last element, in the fourth piece
    path = tmp_path / "late.safetensors"
    save_file({"w": weights}, str(path))

    with pytest.raises(ConfigError, match="'w' has NaN or infinite values"):
        load_init_model(str(path))
