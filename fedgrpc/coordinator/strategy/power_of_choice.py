"""`loss` selection: power-of-choice, with the client's claims bounded.

Cho, Wang, Joshi 2020, "Client Selection in Federated Learning: Convergence
Analysis and Power-of-Choice Selection Strategies" (arXiv 2010.01243),
Algorithm 1 ("pow-d"):

1. sample a candidate set A of d >= k clients without replacement, with
   probability proportional to their data fraction pᵢ;
2. take the k clients of A with the highest local loss.

Biasing towards high-loss clients speeds up convergence (their Theorem 3.1);
the candidate set keeps some randomness so low-loss clients still take part.

Both inputs are claims a client makes about itself, so both are bounded:

- *Samples.* A client may declare any sample count. Its sampling weight is
  clipped to `max_sample_ratio` x the median declared count of the
  candidates (the median, because a minority of liars cannot move it), and
  counts below 1 count as 1.
- *Loss.* A is drawn from the nonce *before* any loss is read, so a client
  reporting a huge loss every round is chosen at most as often as it lands
  in A. With its weight capped at r x median, that is at most about
  min(1, d·r / (n - d)) of the rounds (n = 20, k = 2, d = 4, r = 2: measured
  ≈ 0.35, against 0.1 for an honest client; see the tests). NaN and ±inf
  losses rank last: a non-finite loss is a broken or hostile client.
- *Newcomers* (no loss yet) rank first within A, so a client that just
  joined gets picked and reports one; they still have to land in A first.

The candidate set uses the Efraimidis-Spirakis exponential race (2006,
"Weighted random sampling with a reservoir"): Eᵢ = -ln(uᵢ) / wᵢ is
exponential with rate wᵢ, and the d smallest Eᵢ are a weighted sample
without replacement. uᵢ come from the round nonce (`selection`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fedgrpc.coordinator.strategy.selection import (
    Candidate,
    candidate_ids,
    check_clients_per_round,
    finite_or,
    nonce_uniforms,
    pick,
)
from fedgrpc.errors import ConfigError

DEFAULT_MAX_SAMPLE_RATIO = 2.0
"""A client's sampling weight is at most twice the median declared count."""

_NEWCOMER, _REPORTED, _BROKEN = 0, 1, 2
"""Ranking tiers inside the candidate set, best first."""


class LossSelector:
    """Power-of-choice: the k highest-loss clients of a weighted candidate set."""

    def __init__(
        self,
        clients_per_round: int,
        candidate_set_size: int | None = None,
        max_sample_ratio: float = DEFAULT_MAX_SAMPLE_RATIO,
    ) -> None:
        """Choose k = `clients_per_round` of d = `candidate_set_size` (default 2k).

        Raises:
            ConfigError: k < 1, d < k, or `max_sample_ratio` < 1.
        """
        check_clients_per_round(clients_per_round)
        d = 2 * clients_per_round if candidate_set_size is None else candidate_set_size
        if d < clients_per_round:
            raise ConfigError(
                f"selection_candidates={d!r} is invalid: power-of-choice draws a "
                f"candidate set of d >= clients_per_round ({clients_per_round}) "
                "clients; d = 2 x clients_per_round is a good start"
            )
        if not (math.isfinite(max_sample_ratio) and max_sample_ratio >= 1):
            raise ConfigError(
                f"max_sample_ratio={max_sample_ratio!r} is invalid: expected a "
                "finite number >= 1 (the cap on one client's weight, in medians)"
            )
        self.clients_per_round = clients_per_round
        self.candidate_set_size = d
        self.max_sample_ratio = max_sample_ratio

    @property
    def name(self) -> str:
        """Always `loss`."""
        return "loss"

    def sampling_weights(
        self, candidates: Sequence[Candidate]
    ) -> npt.NDArray[np.float64]:
        """wᵢ = clip(declared samplesᵢ, 1, r x median of the declared counts)."""
        declared = np.array(
            [max(c.declared_samples, 1) for c in candidates], dtype=np.float64
        )
        cap = self.max_sample_ratio * float(np.median(declared))
        return np.minimum(declared, cap)

    def candidate_set(
        self, candidates: Sequence[Candidate], nonce: bytes
    ) -> npt.NDArray[np.intp]:
        """Indices of the d candidates drawn ∝ their clipped weights (module doc)."""
        draws = nonce_uniforms(nonce, candidate_ids(candidates))
        race = -np.log(draws) / self.sampling_weights(candidates)  # Eᵢ ~ Exp(wᵢ)
        return np.argsort(race, kind="stable")[: self.candidate_set_size]

    def select(self, candidates: Sequence[Candidate], nonce: bytes) -> tuple[str, ...]:
        """Newcomers, then highest finite loss, within the candidate set."""
        ids = candidate_ids(candidates)
        if len(ids) <= self.clients_per_round:
            return tuple(sorted(ids))
        chosen = self.candidate_set(candidates, nonce)  # (d,) indices
        tier = np.array([_tier(candidates[i].last_loss) for i in chosen])
        loss = np.array([finite_or(candidates[i].last_loss, 0.0) for i in chosen])
        ties = nonce_uniforms(nonce, [ids[i] for i in chosen])
        # lexsort sorts by the last key first: tier, then loss descending,
        # then the nonce draw so equal losses still split reproducibly.
        order = chosen[np.lexsort((ties, -loss, tier))]
        return pick(ids, order, self.clients_per_round)


def _tier(loss: float | None) -> int:
    if loss is None:
        return _NEWCOMER
    return _REPORTED if math.isfinite(loss) else _BROKEN
