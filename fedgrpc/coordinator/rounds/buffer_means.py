"""Buffers (BatchNorm's running statistics) are averaged, never stepped.

With every client based on the current version, master - mean(snapshot -
local) is the clients' weighted mean of the buffer (FedAvg of the
statistics). An outer step would apply momentum and a learning rate to
BatchNorm's running variance, which can then turn negative. So before the
step the buffers' mean pseudo-gradients are moved out of the mean (zeroed
there: a zero pseudo-gradient leaves the outer optimizer's own update at
those coordinates zero, its state there stays zero), and after it they are
subtracted from the weights as they are. Buffers are a tiny slice of any
model: the copies cost nothing.

Works on the whole mean (`GlobalModel.step`) or on one block of it at a
time (`disk_step`): `offset` is the coordinate the given piece starts at,
and the ranges returned are relative to that piece.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from fedgrpc.domain.model_spec import TensorSlot

BufferMeans = list[tuple[tuple[int, int], torch.Tensor]]
"""((start, stop), the mean's values there) per buffer range of a piece."""


def take_buffer_means(
    slots: Iterable[TensorSlot], mean: torch.Tensor, offset: int = 0
) -> BufferMeans:
    """Move the buffers' coordinates out of `mean` (starting at `offset`); zero them."""
    taken = []
    for slot in slots:
        start = max(0, slot.coord_offset - offset)
        stop = min(mean.numel(), slot.coord_offset + slot.spec.numel - offset)
        if start >= stop:
            continue
        taken.append(((start, stop), mean[start:stop].clone()))
        mean[start:stop] = 0
    return taken


def apply_buffer_means(target: torch.Tensor, taken: BufferMeans) -> None:
    """target[start:stop] -= the buffer's mean pseudo-gradient, per taken range."""
    for (start, stop), mean_delta in taken:
        target[start:stop].sub_(mean_delta)
