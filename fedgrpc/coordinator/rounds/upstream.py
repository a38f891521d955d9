"""The seam through which a leaf coordinator's rounds reach its root.

Plain Python and torch: the round engine sees only this Protocol; the
implementation (`coordinator.tree.RootLink`) rides on the client library
and is plugged in by the composer. A `GlobalModel` with an upstream is a
*leaf*: its version 0 is the root's current model, and where a flat
coordinator would run its outer step it sends the group's mean upward
(`relay`) and adopts whatever model the root then publishes.

Why the group's mean with its total weight reproduces the flat result: the
flat coordinator applies sum_i w_i x_i / sum_i w_i over every client i.
Leaf L sends m_L = sum_{i in L} w_i x_i / W_L with weight W_L = sum_{i in
L} w_i, and the root, weighting by the claimed samples, computes
sum_L W_L m_L / sum_L W_L = the same mean (McMahan et al. 2017, FedAvg's
weighted mean is associative over a partition), up to float32 rounding of
the two-level sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from fedgrpc.domain.model_spec import ModelSpec


@dataclass(frozen=True, slots=True)
class RootModel:
    """A model the root published: float32 coordinates and its version."""

    weights: torch.Tensor
    version: int
    spec: ModelSpec
    """The federation's spec as the root announced it (its dtypes win)."""


class Upstream(Protocol):
    """A leaf's link to its root; `exchange` and `close` block (apply thread)."""

    @property
    def target(self) -> str:
        """The root's host:port, for logs and status."""
        ...

    def bootstrap(self, spec: ModelSpec) -> RootModel:
        """The root's current model, reached by joining it with `spec`.

        Must not block (it runs on the leaf's event loop): it may start
        reaching the root and raise until that is done.

        Raises:
            FedGrpcError: not reached yet (UpstreamUnavailableError), or the
                root refuses the leaf (it has no initial model, say).
        """
        ...

    def exchange(
        self, mean: torch.Tensor, weight: int, base_version: int
    ) -> RootModel | str:
        """One round of the root for the group's `mean`.

        Pushes `mean` (claiming `weight` samples, based on `base_version`)
        into the root's open round, waits for it to close, and pulls the
        result. Returns the root's new model, or why the leaf's round must
        be skipped (the root skipped its round, or was unreachable).
        """
        ...

    def close(self) -> None:
        """Leave the root (idempotent)."""
        ...
