"""Streaming weighted mean of client updates, in O(model) memory.

On the coordinator's data path this sits after `wire` has decoded an update
and before `optim` applies the outer step. Updates are added as they arrive
and immediately folded into one float32 running sum, so a round with n clients
needs one model-sized buffer, not n (DESIGN.md, "memory O(model), not
O(model x clients)").

Not thread-safe: the coordinator adds from one asyncio task at a time.
"""

from __future__ import annotations

import math

import torch

from fedgrpc.errors import ConfigError, InvalidUpdateError, WrongRoundError


class WeightedSum:
    """Running Σ wᵢ·uᵢ and Σ wᵢ over one round's updates.

    The weight is usually the client's sample count, so the mean is the
    sample-weighted average FedAvg prescribes; pass 1.0 for a plain mean.

    Life cycle: `add` any number of times, then `mean` once. `mean` divides in
    place and hands the buffer to the caller, so the object is then *spent*:
    `add` and `mean` raise `WrongRoundError` until `reset`.
    """

    def __init__(self, num_coordinates: int) -> None:
        if num_coordinates <= 0:
            raise ConfigError(
                f"num_coordinates must be > 0, got {num_coordinates}; "
                "it is the length of the flat model vector"
            )
        self._num_coordinates = num_coordinates
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._total_weight = 0.0
        self._spent = False

    @property
    def num_coordinates(self) -> int:
        """Length every update must have (the flat model's size)."""
        return self._num_coordinates

    @property
    def count(self) -> int:
        """Number of updates added since construction or the last `reset`."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Sum of the weights added (kept in float64 so many small weights add up)."""
        return self._total_weight

    def add(
        self, update: torch.Tensor, weight: float, *, consume: bool = False
    ) -> None:
        """Fold `weight * update` into the running sum.

        Args:
            update: 1-D float32 tensor of `num_coordinates` values (any device,
                but the same device for every update of a round).
            weight: > 0, e.g. the client's sample count.
            consume: the caller gives up `update`. For the first update this
                lets the sum take over its storage (scaled in place) instead of
                allocating a model-sized buffer; later updates are added and
                left as they are.

        Raises:
            InvalidUpdateError: wrong shape, dtype or device, NaN/Inf values, or
                a weight that is not a finite number > 0. Nothing is added.
            WrongRoundError: `mean` was already taken; call `reset` first.
        """
        self._check_not_spent()
        self._check_update(update, weight)
        if self._sum is None:
            if consume:
                self._sum = update.mul_(weight) if weight != 1.0 else update
            else:
                self._sum = update * weight
        else:
            self._sum.add_(update, alpha=weight)
        self._count += 1
        self._total_weight += weight

    def mean(self) -> torch.Tensor:
        """Return Σ wᵢ·uᵢ / Σ wᵢ, computed in place in the sum buffer.

        The returned tensor *is* the sum buffer (no copy), now owned by the
        caller; this object drops its reference and is spent until `reset`.

        Raises:
            WrongRoundError: no update was added, or `mean` was already taken.
        """
        self._check_not_spent()
        if self._sum is None:
            raise WrongRoundError(
                "cannot take the mean of zero updates; wait for at least one "
                "accepted update before closing the round"
            )
        result = self._sum.div_(self._total_weight)
        self._sum = None
        self._spent = True
        return result

    def reset(self) -> None:
        """Drop the buffer (freeing its memory) and start an empty sum."""
        self._sum = None
        self._count = 0
        self._total_weight = 0.0
        self._spent = False

    def _check_not_spent(self) -> None:
        if self._spent:
            raise WrongRoundError(
                "this WeightedSum was spent by mean(); call reset() to start "
                "the next round"
            )

    def _check_update(self, update: torch.Tensor, weight: float) -> None:
        """Validate before touching the sum, so a rejected update changes nothing."""
        if not (math.isfinite(weight) and weight > 0):
            raise InvalidUpdateError(
                f"update weight must be finite and > 0, got {weight}"
            )
        if update.dim() != 1 or update.dtype != torch.float32:
            raise InvalidUpdateError(
                f"update must be a 1-D float32 tensor, got shape "
                f"{tuple(update.shape)} dtype {update.dtype}"
            )
        if update.numel() != self._num_coordinates:
            raise InvalidUpdateError(
                f"update has {update.numel()} coordinates but the model has "
                f"{self._num_coordinates}"
            )
        if self._sum is not None and update.device != self._sum.device:
            raise InvalidUpdateError(
                f"update is on {update.device} but the sum is on {self._sum.device}"
            )
        # One reduction, no d-sized mask: NaN/Inf always make the sum
        # non-finite; finite values only fail if they overflow float32 when
        # summed, which no sane update does. A NaN in the running sum would
        # ruin the whole round, since it cannot be subtracted out again.
        if not math.isfinite(float(update.sum())):
            raise InvalidUpdateError("update contains NaN or Inf values")
