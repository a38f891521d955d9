"""The simulator model: deterministic init, shapes, initial loss, training, eval."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from fedgrpc.errors import ConfigError
from fedgrpc.sim.corpus import sample_batch
from fedgrpc.sim.models import (
    CharModelConfig,
    TrainDefaults,
    build_model,
    evaluate,
    make_inner_optimizer,
    train_step,
)

TINY = CharModelConfig(context=16, d_model=32, n_heads=2, n_layers=1)


def _parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _random_tokens(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))


def test_same_seed_builds_identical_parameters() -> None:
    first = _parameters(build_model(TINY, seed=3))
    second = _parameters(build_model(TINY, seed=3))

    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_different_seeds_build_different_parameters() -> None:
    first = _parameters(build_model(TINY, seed=3))
    second = _parameters(build_model(TINY, seed=4))

    assert not torch.equal(first["tok_emb.weight"], second["tok_emb.weight"])


def test_build_model_leaves_the_global_rng_alone() -> None:
    before = torch.random.get_rng_state()

    build_model(TINY, seed=0)

    assert torch.equal(torch.random.get_rng_state(), before)


def test_head_is_untied_so_every_state_dict_entry_has_its_own_storage() -> None:
    model = build_model(TINY, seed=0)

    pointers = [t.data_ptr() for t in model.state_dict().values()]

    assert len(pointers) == len(set(pointers))


def test_forward_returns_logits_per_position() -> None:
    model = build_model(TINY, seed=0)

    logits = model(_random_tokens((3, 10)))

    assert logits.shape == (3, 10, 256)
    assert logits.dtype == torch.float32


def test_forward_rejects_sequences_longer_than_the_context() -> None:
    model = build_model(TINY, seed=0)

    with pytest.raises(ConfigError, match="context"):
        model(_random_tokens((1, TINY.context + 1)))


def test_initial_loss_is_near_uniform() -> None:
    model = build_model(TINY, seed=0)
    tokens = _random_tokens((8, TINY.context + 1))

    with torch.no_grad():
        loss = model.loss(tokens[:, :-1], tokens[:, 1:])

    assert abs(float(loss) - math.log(256)) < 0.1


def test_a_few_dozen_train_steps_reduce_the_loss() -> None:
    defaults = TrainDefaults(batch_size=8, lr=1e-2, model=TINY)
    model = build_model(TINY, seed=0)
    optimizer = make_inner_optimizer(model, defaults)
    data = torch.tensor(list(b"def f(x):\n    return x + 1\n" * 40), dtype=torch.uint8)
    before = evaluate(model, data, 8, TINY.context, num_batches=2, seed=0)

    generator = torch.Generator().manual_seed(1)
    for _ in range(40):
        batch = sample_batch(data, 8, TINY.context, generator)
        train_step(model, optimizer, batch, defaults.grad_clip_norm)

    after = evaluate(model, data, 8, TINY.context, num_batches=2, seed=0)
    assert after < before - 2.0


def test_evaluate_is_deterministic_and_restores_training_mode() -> None:
    model = build_model(TINY, seed=0)
    model.train()
    data = _random_tokens((2_000,)).to(torch.uint8)

    first = evaluate(model, data, 4, TINY.context, num_batches=3, seed=5)
    second = evaluate(model, data, 4, TINY.context, num_batches=3, seed=5)

    assert first == second
    assert model.training


def test_evaluate_rejects_zero_batches() -> None:
    model = build_model(TINY, seed=0)

    with pytest.raises(ConfigError, match="num_batches"):
        evaluate(model, torch.arange(100), 2, 8, num_batches=0, seed=0)


def test_inner_optimizer_decays_matrices_only() -> None:
    model = build_model(TINY, seed=0)

    optimizer = make_inner_optimizer(model, TrainDefaults(weight_decay=0.1))

    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1
    assert all(p.dim() >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0
    assert all(p.dim() < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(
        list(model.parameters())
    )


def test_train_defaults_context_is_the_model_context() -> None:
    defaults = TrainDefaults(model=TINY)

    assert defaults.context == TINY.context


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"d_model": 30, "n_heads": 4}, "d_model"),
        ({"n_layers": 0}, "n_layers"),
        ({"context": 0}, "context"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_model_config_rejects_bad_values(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        CharModelConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"grad_clip_norm": -1.0}, "grad_clip_norm"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_train_defaults_reject_bad_values(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        TrainDefaults(**kwargs)
