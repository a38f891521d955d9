"""The simulator's tasks: digits (CNN, accuracy) and the char-LM's partitions."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from fedgrpc.data import parse_partition
from fedgrpc.errors import ConfigError, FedGrpcError
from fedgrpc.sim.attack_spec import parse_attack
from fedgrpc.sim.config import SimulationConfig
from fedgrpc.sim.tasks import TaskSettings, load_task
from fedgrpc.sim.tasks.charlm import PIECE_BYTES, CharLMTask
from fedgrpc.sim.tasks.digits import DigitsTask, load_digits_split

SMALL_CORPUS = 2_000_000  # reaches asyncio/, collections/, ... (sorted paths)


@pytest.fixture(scope="module")
def digits() -> DigitsTask:
    return DigitsTask()


@pytest.fixture(scope="module")
def charlm() -> CharLMTask:
    task = load_task(TaskSettings(corpus_bytes=SMALL_CORPUS))
    assert isinstance(task, CharLMTask)
    return task


def test_digits_split_is_fixed_and_stratified(digits: DigitsTask) -> None:
    again = DigitsTask()

    assert digits.train_x.shape == (1437, 1, 8, 8)
    assert digits.val_x.shape == (360, 1, 8, 8)
    assert torch.equal(again.val_y, digits.val_y)
    per_digit = torch.bincount(digits.val_y, minlength=10)
    assert per_digit.min() >= 35  # stratified: ~36 of each digit
    assert float(digits.train_x.min()) >= 0.0
    assert float(digits.train_x.max()) <= 1.0


def test_digits_model_has_batchnorm_and_is_seeded_without_touching_global_rng(
    digits: DigitsTask,
) -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)

    first, second, other = (
        digits.build_model(0),
        digits.build_model(0),
        digits.build_model(1),
    )

    assert torch.equal(torch.rand(1), before)  # global RNG left as it was
    assert any(isinstance(m, nn.BatchNorm2d) for m in first.modules())
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            first.state_dict().values(), second.state_dict().values(), strict=True
        )
    )
    assert not torch.equal(
        first.state_dict()["head.weight"], other.state_dict()["head.weight"]
    )


def test_digits_sampler_draws_only_the_clients_images(digits: DigitsTask) -> None:
    split = digits.partition(4, parse_partition("dirichlet:0.1"), seed=0)
    sample = digits.sampler(split, 2)
    allowed = set(np.flatnonzero(split.counts[2]).tolist())

    labels = torch.cat([sample(torch.Generator().manual_seed(s))[1] for s in range(20)])

    assert set(labels.tolist()) <= allowed
    assert split.sizes.min() >= 8  # MIN_CLIENT_SAMPLES


def test_digits_trains_to_high_accuracy_and_evaluate_restores_mode(
    digits: DigitsTask,
) -> None:
    torch.set_num_threads(1)
    model = digits.build_model(0)
    optimizer = digits.make_optimizer(model)
    sample = digits.sampler(digits.partition(1, parse_partition("iid"), seed=0), 0)
    generator = torch.Generator().manual_seed(0)
    start = digits.evaluate(model, seed=0)

    for _ in range(150):
        digits.train_step(model, optimizer, sample(generator))
    model.train()
    end = digits.evaluate(model, seed=0)

    assert model.training
    assert start["val_accuracy"] < 0.3
    assert end["val_accuracy"] > 0.9
    assert end["val_loss"] < start["val_loss"]


def test_digits_without_scikit_learn_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    load_digits_split.cache_clear()
    for name in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it fails
    try:
        with pytest.raises(ConfigError, match=r"pip install 'fedgrpc\[digits\]'"):
            DigitsTask()
    finally:
        load_digits_split.cache_clear()


def test_charlm_iid_keeps_the_contiguous_shards(charlm: CharLMTask) -> None:
    split = charlm.partition(3, parse_partition("iid"), seed=5)

    for client in range(3):
        assert torch.equal(charlm.shard(split, client), charlm.splits.shard(client, 3))
    # The table's pieces follow the shards: client 0's pieces come first.
    assert np.all(np.diff(split.assignment) >= 0)


def test_charlm_dirichlet_splits_pieces_by_package(charlm: CharLMTask) -> None:
    labels, names = charlm.piece_labels()
    split = charlm.partition(3, parse_partition("dirichlet:0.3"), seed=0)

    shards = [charlm.shard(split, c) for c in range(3)]

    assert "(modules)" in names
    assert {"asyncio", "collections"} <= set(names)
    assert labels.size == -(-charlm.splits.train.numel() // PIECE_BYTES)
    assert sum(s.numel() for s in shards) == charlm.splits.train.numel()
    first_piece = charlm.splits.train[:PIECE_BYTES]
    owner = int(split.assignment[0])
    assert torch.equal(shards[owner][:PIECE_BYTES], first_piece)
    assert split.label_entropy().mean() < np.log(len(names))


def test_unknown_task_is_refused() -> None:
    with pytest.raises(ConfigError, match="task 'mnist' is unknown: expected one of"):
        TaskSettings(name="mnist")


def test_poisoning_attacks_are_refused_on_digits() -> None:
    with pytest.raises(FedGrpcError, match="poisons char-LM batches"):
        SimulationConfig(task="digits", attacks=(parse_attack("labelflip:0.25"),))

    SimulationConfig(task="digits", attacks=(parse_attack("signflip:0.25"),))  # fine
