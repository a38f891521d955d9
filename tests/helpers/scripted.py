"""A DiLoCo client whose pseudo-gradients the test chooses, and the torch reference.

For checkpoint and restart tests: with H = 1 each `step()` is a sync point,
and moving the weights by a known step just before it makes the pushed
pseudo-gradient known exactly (`global - local`, computed here as the client
does). `torch.optim.SGD(nesterov=True)` over the applied ones is then the
reference for the coordinator's weights and momentum.
"""

from __future__ import annotations

import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig

FAST = ClientConfig(rpc_timeout_s=10, round_wait_s=30, connect_timeout_s=20)
"""Client timeouts for tests: generous, but failures surface in seconds."""
GIVE_UP_FAST = ClientConfig(
    rpc_timeout_s=10, round_wait_s=30, connect_timeout_s=20,
    reconnect_initial_s=0.1, reconnect_max_s=0.5, reconnect_give_up_s=0.5,
)  # fmt: skip
"""FAST, but a lost coordinator makes `step()` raise within ~0.5 s instead of
the client waiting for it to come back (`reconnect_give_up_s`)."""


def flat(model: nn.Module) -> torch.Tensor:
    """The model's parameters as one float32 vector (spec order)."""
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


def scripted_steps(
    client: DiLoCoClient,
    model: nn.Module,
    steps: list[torch.Tensor],
    pushed: list[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Push `global - (global - step)` once per step; returns what was pushed.

    Each pseudo-gradient is appended to `pushed` (if given) *before* its sync
    point, so a caller still has it when that sync point raises.
    """
    pushed = [] if pushed is None else pushed
    for step in steps:
        before = flat(model)
        with torch.no_grad():
            offset = 0
            for param in model.parameters():
                n = param.numel()
                param.sub_(step[offset : offset + n].view(param.shape))
                offset += n
        pushed.append(before - flat(model))
        assert client.step(None, num_samples=1), "H must be 1: every step syncs"
        assert client.last_round_outcome == "applied", client.last_round_outcome
    return pushed


def random_steps(count: int, size: int, seed: int) -> list[torch.Tensor]:
    """`count` small random pseudo-gradients (scale 0.1: the guard stays quiet)."""
    generator = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(size, generator=generator) for _ in range(count)]


def nesterov_reference(
    initial: torch.Tensor, gradients: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, momentum buffer) after DiLoCo's outer steps on `gradients`."""
    param = nn.Parameter(initial.clone())
    optimizer = torch.optim.SGD([param], lr=0.7, momentum=0.9, nesterov=True)
    for gradient in gradients:
        param.grad = gradient.clone()
        optimizer.step()
    buffer = optimizer.state[param]["momentum_buffer"]
    return param.detach().clone(), buffer.clone()
