"""The `agedecay` ablation's ranking for bench/_convergence_shared.py (bench only).

`age` runs the library's rule (`fedgrpc.compress.residual_age`, the
coordinator's `secagg_index_rule = "residual_age"`). `agedecay` asks what
happens when the estimate also knows the clients' residual decay β
(SparseLoCo's `feedback_decay`): what waits after a rounds at a steady
rate is then rate · (1 - β^a) / (1 - β), which stops growing at
rate / (1 - β), so the stalest coordinates are no longer flushed first
and the set sticks to the loud ones. Measured much worse (seed 0,
SparseLoCo lr 2.5, decay 0.6: 2.121 against 1.699 for `age`), which is
why the library's rule assumes no decay.
"""

from __future__ import annotations

import torch

from fedgrpc.compress.residual_age import ResidualAge


class DecayAwareAge(ResidualAge):
    """`ResidualAge` whose pending mass follows the clients' decay β."""

    __slots__ = ("decay",)

    def __init__(self, num_coordinates: int, decay: float) -> None:
        """Every coordinate unsent; `decay` is β in e <- β·e + Δ, in (0, 1)."""
        super().__init__(num_coordinates)
        self.decay = decay

    def _pending(self, age: torch.Tensor) -> torch.Tensor:
        return (1.0 - torch.pow(self.decay, age)) / (1.0 - self.decay)
