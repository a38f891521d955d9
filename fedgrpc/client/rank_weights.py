"""Rank 0's global weights to every other rank of one torchrun client.

`DistributedDiLoCoClient` runs the federation on rank 0; after each load the
other replicas must hold exactly what rank 0's `DiLoCoClient` loaded: the
federated parameters, then the float buffers it averages
(`client.tensors.select_tensors`; integer counters stay each rank's own).
One flat `dist.broadcast` per (device, dtype) group, in spec order, which
is the same on every rank (same module code, same sharing rules), so no
layout is sent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from fedgrpc.client.tensors import select_tensors
from fedgrpc.config import ClientConfig


class RankWeights:
    """The tensors a replica receives from rank 0, grouped for broadcasting."""

    def __init__(self, model: torch.nn.Module, config: ClientConfig | None) -> None:
        federated = select_tensors(model, config or ClientConfig())
        buffers = federated.tensors[len(federated.parameters) :]
        self.parameters = federated.parameters
        """What FedProx anchors on the other ranks."""
        self._buckets = _buckets(federated.parameters)
        self._parameter_buckets = len(self._buckets)
        self._buckets += _buckets([t for t in buffers if t.is_floating_point()])

    def broadcast(
        self, rank: int, src: int, group: dist.ProcessGroup | None
    ) -> list[torch.Tensor]:
        """Send (rank 0) or receive the weights; the received parameters' views.

        Receiving ranks get their parameters as views of the received flat
        buffers, in `parameters` order (FedProx's w^t); rank 0 gets [].
        """
        anchors: list[torch.Tensor] = []
        with torch.no_grad():
            for index, tensors in enumerate(self._buckets):
                if rank == 0:
                    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
                else:
                    numel = sum(t.numel() for t in tensors)
                    flat = torch.empty(
                        numel, dtype=tensors[0].dtype, device=tensors[0].device
                    )
                dist.broadcast(flat, src=src, group=group)
                if rank != 0:
                    views = torch.split(flat, [t.numel() for t in tensors])
                    for tensor, view in zip(tensors, views, strict=True):
                        tensor.copy_(view.view_as(tensor))
                    if index < self._parameter_buckets:
                        anchors.extend(views)
        return anchors


def _buckets(tensors: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Tensors grouped by (device, dtype), in the given (spec) order."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    return list(groups.values())
