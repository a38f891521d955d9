"""How much one update counts in its round's mean, and the bounds on what it claims.

An update's `num_samples` and `train_loss` are claims no one can check: a
signed header proves who sent them, not that they are true. Before this
module an update claiming 2^64 - 1 samples was 100 % of the global model
every round, and the per-client total then overflowed the uint64 status
fields so GetStatus failed for good (the total is checkpointed). So:

* `check_claims` refuses claims no honest client makes (more samples than
  `max_samples_per_update`, a NaN or infinite loss) with INVALID_ARGUMENT;
* `SampleWeighting.weight` is the ONE place an update's weight is computed
  (`weighting` = samples, equal or capped; see `RobustnessSettings`), times
  the client's `weight_factor` (soft quarantine);
* `saturating_add` keeps every counter below 2^63, the smallest of the
  fields they end up in (int64 in JSON checkpoints read by other tools,
  uint64 in status).

Plain Python: no gRPC, no torch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.domain.requests import UpdateHeaderInfo
from fedgrpc.errors import InvalidUpdateError

COUNTER_MAX = 2**63 - 1
"""Where counters stop: fits int64 and uint64 fields alike."""
MIN_WEIGHT_FACTOR = 1e-6
"""Smallest `weight_factor` applied: the sum refuses a weight of 0 (and would
void the round), so a client that must not count at all is excluded instead
(`ClientRecord.excluded_until_round`)."""


def saturating_add(total: int, amount: int) -> int:
    """`total + amount`, but at most COUNTER_MAX: counters saturate, never wrap."""
    return min(COUNTER_MAX, total + max(0, amount))


MAX_EVAL_LOSS = 1e9
"""Largest |eval_loss| taken: a round's mean of them stays finite, and the
logs and status strict JSON."""
MAX_COMPUTE_S = 365 * 86400.0
"""Largest `compute_s` claim: a year of training behind one update. Bounds
what one liar adds to the goodput counters (status only)."""


def check_claims(config: CoordinatorConfig, header: UpdateHeaderInfo) -> None:
    """Refuse a header whose sample count or loss no honest client sends.

    Raises:
        InvalidUpdateError: `num_samples` over `max_samples_per_update`, a
            NaN / infinite `train_loss`, or a `compute_s` that is not finite
            and within a year (INVALID_ARGUMENT).
    """
    claimed = header.declared_samples
    samples = header.num_samples if claimed is None else claimed
    limit = config.max_samples_per_update
    if samples > limit:
        raise InvalidUpdateError(
            f"num_samples {samples} is over max_samples_per_update ({limit}); "
            "send the samples (or tokens) of this round's local training, or "
            "ask the operator to raise max_samples_per_update"
        )
    if not math.isfinite(header.train_loss):
        raise InvalidUpdateError(
            f"train_loss is {header.train_loss}: local training diverged (check "
            "the learning rate and the loss); send a finite loss"
        )
    loss = header.eval_loss
    if loss is not None and not (math.isfinite(loss) and abs(loss) <= MAX_EVAL_LOSS):
        raise InvalidUpdateError(
            f"eval_loss is {loss}: send a finite validation loss within "
            f"±{MAX_EVAL_LOSS:g}, or leave it unset"
        )
    compute_s = header.compute_s
    if compute_s is not None and not (
        math.isfinite(compute_s) and 0 <= compute_s <= MAX_COMPUTE_S
    ):
        raise InvalidUpdateError(
            f"compute_s is {compute_s}: send the wall seconds of local training "
            f"behind this update, 0..{MAX_COMPUTE_S:g}, or leave it unset"
        )


class SampleWeighting:
    """Each update's weight in the mean, by the `weighting` setting.

    `capped` needs a typical claim before the round's first chunk (the
    streaming sum takes each update's weight with its values), so it uses
    the lower median of the claims committed in the last round that had
    any: one liar among two or more clients cannot move it past an honest
    claim. The lower median of two claims is the smaller one, so a liar
    alone with one honest client cannot raise it either.
    """

    def __init__(self, config: CoordinatorConfig) -> None:
        """Start with no reference claim (first round: equal weights under capped)."""
        self.mode = config.weighting
        self.ratio = config.max_sample_weight_ratio
        self.reference: int | None = None
        """Lower median of the last committed round's claims (None: no round yet)."""

    def weight(self, client: ClientRecord, num_samples: int) -> float:
        """The weight of `client`'s update claiming `num_samples` (>= 1).

        samples: n; equal: 1; capped: min(n, ratio x reference), or 1
        before any reference. Times `weight_factor`, clamped to
        [MIN_WEIGHT_FACTOR, 1]: trust can only lower a weight, never to 0.
        """
        if self.mode == "samples":
            base = float(num_samples)
        elif self.mode == "equal" or self.reference is None:
            base = 1.0
        else:
            base = min(float(num_samples), self.ratio * self.reference)
        factor = client.weight_factor
        if not factor >= MIN_WEIGHT_FACTOR:  # also NaN
            factor = MIN_WEIGHT_FACTOR
        return base * min(factor, 1.0)

    def round_closed(self, claims: Sequence[int]) -> None:
        """Take the committed claims of a closed round as the next reference."""
        if claims:
            self.reference = statistics.median_low(claims)
