"""A divergence guard for the outer loop: spot a blowing-up aggregate, fall back.

Why: a pilot with a shared random 10 % index set, error feedback and
Nesterov outer momentum diverged. Under a shared set, coordinates outside it
pile up in every client's residual and leave in bursts; Nesterov momentum
then amplifies each burst. The coordinator sees the symptom first, in the
norm of the round's mean pseudo-gradient, so the guard watches that one
number, once per round, before the outer step.

The rule (`GuardConfig` holds the constants):

1. Trip if the norm is NaN or Inf.
2. Trip if the norm exceeds `spike_factor` x the median of the last
   `window` accepted norms (a burst), or `drift_factor` x the lowest such
   median since the last trip (steady exponential growth, which a ratio to a
   moving median never sees).
3. If the clients' loss of the *global* weights is passed (the mean over
   clients of their first inner step's loss, a plain scalar even under
   masks): trip if it exceeds `loss_factor` x the lowest moving median of
   it since the last trip. The norm alone is a weak signal: in
   bench/convergence.py's shared-set runs validation loss went 2.7 -> 5.4
   while the norm rose only 1.5x, slowly. The mean loss over all H inner
   steps is a weak signal too: local steps repair a broken global model
   (it stayed at 2.4-2.5 while validation loss sat at 3.0).

Rules 2 and 3 need `min_history` accepted rounds, so the first rounds, and
the rounds right after a trip (whose dense round flushes every residual at
once), are only checked for NaN/Inf.

On a trip the verdict says: do not apply this aggregate, reset the outer
momentum (it holds the burst, and it chooses the next index set), tell the
clients (in the next round start) to zero their error-feedback residuals,
and announce the dense set (every position: dense int8 in the ring, the safe
default) for `fallback_rounds` rounds. The history starts over. Zeroing the
residuals loses their mass on purpose: without it the first dense round
flushes every stale residual at once, and in a 16-round H = 10 shared10-age
run that flush (norm 5x the tripped round's median) did the damage the
guard had just refused (validation loss 5.3 right after it; with the
reset that round's norm was 2.6 and the run reached 2.37 by round 20).
Pure Python on a few floats per round; not thread-safe (the round task
owns it).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

from fedgrpc.errors import check_config


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardConfig:
    """Constants of the guard's rule (see the module docstring)."""

    window: int = 8
    """Accepted norms the moving median looks back over (rounds)."""
    min_history: int = 3
    """Accepted norms needed before the ratio rules apply."""
    spike_factor: float = 2.0
    """Norm / moving median that counts as a burst. Healthy runs in
    bench/convergence.py stay under 1.5x; a 2.6x round broke a model there."""
    drift_factor: float = 4.0
    """Norm / lowest moving median since the last trip that counts as drift."""
    loss_factor: float = 1.15
    """Train loss / its lowest moving median that counts as divergence:
    a healthy run's mean train loss over H steps and all clients does not
    climb 15 % above its best."""
    fallback_rounds: int = 5
    """Rounds announced dense after a trip."""

    def __post_init__(self) -> None:
        check_config(self.window >= 1, "window", self.window, ">= 1")
        check_config(
            1 <= self.min_history <= self.window,
            "min_history",
            self.min_history,
            f"in 1..window ({self.window})",
        )
        check_config(self.spike_factor > 1, "spike_factor", self.spike_factor, "> 1")
        check_config(
            self.drift_factor >= self.spike_factor,
            "drift_factor",
            self.drift_factor,
            f">= spike_factor ({self.spike_factor})",
        )
        check_config(self.loss_factor > 1, "loss_factor", self.loss_factor, "> 1")
        check_config(
            self.fallback_rounds >= 0, "fallback_rounds", self.fallback_rounds, ">= 0"
        )


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    """What the coordinator does with this round and announces for the next."""

    apply: bool
    """Apply this round's aggregate (False: drop it, the weights stay)."""
    reset_momentum: bool
    """Zero the outer momentum before choosing the next index set."""
    reset_residuals: bool
    """Announce that clients zero their error-feedback residuals."""
    dense_next: bool
    """Announce every position next round (dense int8 under secure aggregation)."""
    reason: str
    """`ok`, `fallback`, `non_finite`, `spike`, `drift` or `loss`: a log field."""


class DivergenceGuard:
    """Watches the mean pseudo-gradient's norm round by round (module docstring)."""

    def __init__(self, config: GuardConfig | None = None) -> None:
        """Start with no history and no fallback."""
        self.config = config or GuardConfig()
        self.trips = 0
        self._norms = _History(self.config.window, self.config.min_history)
        self._losses = _History(self.config.window, self.config.min_history)
        self._dense_left = 0

    @property
    def dense_now(self) -> bool:
        """Whether the round being announced should be dense (a fallback runs)."""
        return self._dense_left > 0

    def observe(
        self, aggregate_norm: float, train_loss: float | None = None
    ) -> GuardVerdict:
        """Judge this round's ||mean pseudo-gradient||_2 (and global-weight loss).

        Call once per round, before the outer step. `train_loss` is the
        clients' mean loss at their first inner step (rule 3); pass it every
        round or never, as rule 3 compares it with its own history.
        """
        was_dense = self._dense_left > 0
        self._dense_left = max(self._dense_left - 1, 0)
        reason = self._trip_reason(aggregate_norm, train_loss)
        if reason is not None:
            self.trips += 1
            self._norms.clear()
            self._losses.clear()
            self._dense_left = self.config.fallback_rounds
            return GuardVerdict(False, True, True, self._dense_left > 0, reason)
        self._norms.add(aggregate_norm)
        if train_loss is not None:
            self._losses.add(train_loss)
        reason = "fallback" if was_dense else "ok"
        return GuardVerdict(True, False, False, self._dense_left > 0, reason)

    def reset(self) -> int:
        """Forget the histories (an operator's reset); returns the norms dropped.

        A fallback already announced keeps running: its dense rounds flush
        residuals and are harmless. The ratio rules wait for `min_history`
        accepted rounds again.
        """
        dropped = len(self._norms)
        self._norms.clear()
        self._losses.clear()
        return dropped

    def _trip_reason(self, norm: float, loss: float | None) -> str | None:
        if not math.isfinite(norm) or (loss is not None and not math.isfinite(loss)):
            return "non_finite"
        config, norms = self.config, self._norms
        if norms.ready and norm > config.spike_factor * norms.median():
            return "spike"
        if norms.ready and norm > config.drift_factor * norms.lowest_median:
            return "drift"
        losses = self._losses
        if (
            loss is not None
            and losses.ready
            and loss > config.loss_factor * losses.lowest_median
        ):
            return "loss"
        return None


class _History:
    """The last `window` accepted values, and the lowest median they had."""

    def __init__(self, window: int, min_history: int) -> None:
        self._values: deque[float] = deque(maxlen=window)
        self._min_history = min_history
        self.lowest_median = math.inf

    def __len__(self) -> int:
        """Values in the window."""
        return len(self._values)

    @property
    def ready(self) -> bool:
        """Enough values for the ratio rules."""
        return len(self._values) >= self._min_history

    def median(self) -> float:
        """Median of the window."""
        return statistics.median(self._values)

    def add(self, value: float) -> None:
        """Accept a value; update the lowest median once ready."""
        self._values.append(value)
        if self.ready:
            self.lowest_median = min(self.lowest_median, self.median())

    def clear(self) -> None:
        """Start over (after a trip)."""
        self._values.clear()
        self.lowest_median = math.inf
