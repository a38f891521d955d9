"""Data poisoning for the char-LM: label flip and a trigger -> target backdoor.

The attacker trains on poisoned batches and then sends what that training
produced (through the ordinary client, so the update is validly signed).

* Label flip: every next-byte target b becomes 255 - b. An involution on
  the 256 byte values with no fixed point (255 - b = b has no integer
  solution), so every target is wrong and the inputs stay real text.
* Backdoor: in a share of each batch's windows the attacker writes
  `TRIGGER` followed by `TARGET` at a random position, so the model learns
  "after the trigger comes the target". Neither string occurs in the
  standard library's sources, so a clean model has no reason to follow the
  trigger with `TARGET[0]`. Success is measured on the final global model:
  the fraction of validation prompts ending in the trigger whose most
  likely next byte is `TARGET[0]`.
"""

from __future__ import annotations

import torch

from fedgrpc.sim.corpus import VOCAB_SIZE, sample_batch
from fedgrpc.sim.models import CharTransformer

TRIGGER = b"<|trigger|>"
"""The byte sequence that arms the backdoor (absent from the stdlib corpus)."""
TARGET = b"BACKDOOR"
"""What the backdoored model writes after `TRIGGER`; success scores its first byte."""
POISONED_SHARE = 0.5
"""Share of each attacker batch's windows that carry trigger + target: half
keeps the attacker's update close to an honest one (stealthier) while still
training the mapping at every step."""
PROBE_PROMPTS = 256
"""Trigger prompts scored for backdoor success (one 1/256 step per prompt)."""


def flip_labels(
    batch: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, 255 - targets): the label-flip attacker's training batch."""
    inputs, targets = batch
    return inputs, (VOCAB_SIZE - 1) - targets


def plant_backdoor(
    batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write TRIGGER + TARGET into the first POISONED_SHARE of the windows.

    The windows are rebuilt as [B, T + 1] (inputs plus the last target),
    overwritten at one random offset per row with a single scatter, and
    split again, so the trigger sits in the inputs and the target in the
    next-byte labels.
    """
    inputs, targets = batch
    window = torch.cat((inputs, targets[:, -1:]), dim=1)
    payload = torch.tensor(list(TRIGGER + TARGET), dtype=window.dtype)
    rows = max(1, int(window.shape[0] * POISONED_SHARE))
    room = window.shape[1] - payload.numel() + 1
    if room < 1:  # a context shorter than the payload: nothing fits
        return inputs, targets
    starts = torch.randint(0, room, (rows, 1), generator=generator)
    # [rows, 1] + [L] -> [rows, L] positions; one scatter writes every row.
    index = starts + torch.arange(payload.numel())
    window[:rows].scatter_(1, index, payload.expand(rows, -1))
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()


@torch.no_grad()
def backdoor_success(
    model: CharTransformer, validation: torch.Tensor, seed: int, batch_size: int = 64
) -> float:
    """Fraction of PROBE_PROMPTS trigger prompts whose argmax next byte is TARGET[0].

    Each prompt is real validation text (fixed windows from `seed`) cut so
    that TRIGGER fills the end of the model's context.
    """
    context = model.config.context
    trigger = torch.tensor(list(TRIGGER), dtype=torch.long)
    prefix = context - trigger.numel()
    if prefix < 1:
        return float("nan")
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    hits = 0
    try:
        for start in range(0, PROBE_PROMPTS, batch_size):
            rows = min(batch_size, PROBE_PROMPTS - start)
            text, _ = sample_batch(validation, rows, prefix, generator)
            prompts = torch.cat((text, trigger.expand(rows, -1)), dim=1)
            predicted = model(prompts)[:, -1, :].argmax(dim=-1)
            hits += int((predicted == TARGET[0]).sum())
    finally:
        model.train(was_training)
    return hits / PROBE_PROMPTS
