"""The `age` ablation's ranking for bench/_convergence_shared.py: a residual estimate.

Apart from `_convergence_shared` because it is its own experiment (the
coordinator guessing residuals from what arrived), measured worse than
both momentum and chunk-norm ranking; the shared-set driver only calls
`scores()` and `record()`.
"""

from __future__ import annotations

import torch


class ResidualEstimate:
    """The coordinator's guess of |mean client residual| per coordinate.

    Why: ranking by |outer momentum| freezes the set. Momentum is non-zero
    only where values were sent, so round 1's random set is ranked top from
    then on and the other coordinates are reached only by the ε·k random
    draws (1 % of d per round at 10 % density, ε 0.1); their residuals grow
    unseen. Per-client top-k avoids this because each client ranks its own
    residual. The coordinator cannot see residuals, but it knows, per
    coordinate, the age a (rounds since it was last sent) and the mean that
    arrived then, which had piled up over that many rounds: rate =
    |mean sent| / a. Its estimate of what waits now is rate · (a + 1)
    (this round's training included); coordinates never sent take the
    median known rate. `scores()` goes to `choose_index_set` in place of the
    momentum, so the set is still public and computed from the aggregate
    alone. Memory: two float32 vectors of d (age, rate).

    Measured worse than momentum ranking (it flushes the stalest residuals,
    all clients at once, and Nesterov amplifies the burst), so it stays an
    experiment here rather than library code.
    """

    def __init__(self, num_coordinates: int) -> None:
        """Every coordinate unsent, of unknown rate."""
        self.age = torch.zeros(num_coordinates)
        self.rate = torch.zeros(num_coordinates)

    def scores(self) -> torch.Tensor:
        """Estimated |mean residual| after this round's training (float32, d)."""
        known = self.rate > 0
        prior = float(self.rate[known].median()) if bool(known.any()) else 0.0
        return torch.where(known, self.rate, prior).mul_(self.age + 1)

    def record(self, positions: torch.Tensor, mean_sent: torch.Tensor) -> None:
        """A round closed: `mean_sent[i]` arrived at `positions[i]`, all aged one."""
        self.age += 1
        sent_rate = mean_sent.abs() / self.age[positions]
        # A zero arrival (nothing pending) keeps the old rate: zero means unknown.
        self.rate[positions] = torch.where(
            sent_rate > 0, sent_rate, self.rate[positions]
        )
        self.age[positions] = 0
