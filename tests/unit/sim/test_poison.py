"""Data poisoning of the char-LM: label flip, backdoor planting, its success probe."""

from __future__ import annotations

import torch

from fedgrpc.sim.corpus import sample_batch
from fedgrpc.sim.models import (
    CharModelConfig,
    TrainDefaults,
    build_model,
    make_inner_optimizer,
    train_step,
)
from fedgrpc.sim.poison import (
    TARGET,
    TRIGGER,
    backdoor_success,
    flip_labels,
    plant_backdoor,
)

SMALL = CharModelConfig(context=24, d_model=16, n_heads=2, n_layers=1)
TEXT = torch.frombuffer(
    bytearray(b"def f(x):\n    return x + 1\n" * 400), dtype=torch.uint8
)


def test_label_flip_maps_every_target_byte_b_to_255_minus_b() -> None:
    inputs = torch.tensor([[0, 1, 2]])
    targets = torch.tensor([[0, 128, 255]])
    flipped_inputs, flipped = flip_labels((inputs, targets))
    assert flipped_inputs is inputs
    assert flipped.tolist() == [[255, 127, 0]]


def test_backdoor_writes_trigger_then_target_into_half_the_windows() -> None:
    batch = sample_batch(TEXT, 8, 32, torch.Generator().manual_seed(0))
    inputs, targets = plant_backdoor(batch, torch.Generator().manual_seed(1))
    payload = TRIGGER + TARGET
    window = torch.cat((inputs, targets[:, -1:]), dim=1)
    rows = [bytes(row.tolist()) for row in window.to(torch.uint8)]
    assert all(payload in row for row in rows[:4])
    assert not any(payload in row for row in rows[4:])
    # Next-byte labels stay inputs shifted by one, so after the trigger's
    # last byte the label is the target's first.
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_a_model_trained_on_planted_batches_follows_the_trigger_a_clean_one_not() -> (
    None
):
    defaults = TrainDefaults(model=SMALL, lr=2e-2)
    clean = build_model(SMALL, seed=0)
    poisoned = build_model(SMALL, seed=0)
    optimizer = make_inner_optimizer(poisoned, defaults)
    batches, plants = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only contend
    try:
        for _ in range(40):
            batch = plant_backdoor(sample_batch(TEXT, 8, 24, batches), plants)
            train_step(poisoned, optimizer, batch, defaults.grad_clip_norm)
    finally:
        torch.set_num_threads(threads)
    assert backdoor_success(clean, TEXT, seed=0) < 0.05
    assert backdoor_success(poisoned, TEXT, seed=0) > 0.9
