"""The round's Privacy stage (DESIGN.md): what clipping and noise a round adds.

The contract between the round engine and each mechanism, so the engine
calls one object whatever the mode (`off`, `central`, `distributed`):

    stage.clip_update(update)                 # each update, before it counts
    stage.finish_aggregate(aggregate, n, g)   # once, on the round's aggregate
    release = stage.round_release(n, population)  # what ε the round spends

Central DP-FedAvg clips in `clip_update` and adds N(0, (z·S)²) to the sum
in `finish_aggregate`; distributed noise was added by the clients inside the
secure ring, so its `finish_aggregate` adds nothing, while its
`round_release` still reports the Gaussian-equivalent release the ledger
composes. `off` does nothing and releases nothing.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from fedgrpc.privacy.ledger import Release


@runtime_checkable
class PrivacyStage(Protocol):
    """One round mechanism of client-level DP."""

    name: str
    """`off`, `central`, `distributed` (shown in status and logs)."""

    def clip_update(self, update: torch.Tensor) -> float:
        """Scale `update` in place to L2 norm <= S; return its norm before."""
        ...

    def finish_aggregate(
        self, aggregate: torch.Tensor, contributors: int, generator: torch.Generator
    ) -> None:
        """Turn the round's aggregate into its private release, in place."""
        ...

    def round_release(self, contributors: int, population: int) -> Release | None:
        """The release this round makes (None: it spends no privacy)."""
        ...


class NoPrivacy:
    """`privacy = "off"`: no clipping, no noise, no ε spent."""

    name = "off"

    def clip_update(self, update: torch.Tensor) -> float:
        """Leave `update` alone; return its norm."""
        return float(torch.linalg.vector_norm(update))

    def finish_aggregate(
        self, aggregate: torch.Tensor, contributors: int, generator: torch.Generator
    ) -> None:
        """Nothing to add."""

    def round_release(self, contributors: int, population: int) -> Release | None:
        """No release: nothing is spent."""
        return None
