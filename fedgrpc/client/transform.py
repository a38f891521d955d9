"""`update_transform`: rewrite a pseudo-gradient just before it is encoded and signed.

For simulation and research only (`fedgrpc simulate --attack` builds its
attackers with it): a Byzantine client in a robustness experiment must be a
real client that sends validly signed updates, so the attack cannot live in
the coordinator or on the wire. The hook sits in `sync.SyncPoint._push`,
after `LocalRun.pseudo_gradient()` and before the codec, error feedback and
signing, so whatever it returns is exactly what the coordinator receives
(up to compression) and verifies. Unset (the default), the push path does
not call into this module at all.

A production client has no reason to set it: the coordinator's robust
aggregators, norm bounds and trust scores exist to withstand what it sends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedgrpc.errors import InvalidUpdateError


@dataclass(frozen=True, slots=True)
class UpdateContext:
    """What a transform may want to know about the update it rewrites."""

    client_id: str
    """Id the coordinator assigned at Join."""
    round_id: int
    """The round this update goes to (colluders key shared state by it)."""
    base_version: int
    """Global model version the pseudo-gradient was computed against."""
    num_samples: int
    """Samples the update will claim (unchanged by the transform)."""


UpdateTransform = Callable[[torch.Tensor, UpdateContext], torch.Tensor | None]
"""`transform(delta, context)`: rewrite `delta` in place and return None, or
return a new float32 tensor of `delta`'s shape. `delta` is the client's own
pseudo-gradient buffer (global - local, DiLoCo's sign), a flat float32 CPU
vector; it is recomputed from the weights at every push, so writing into it
loses nothing. Called once per push, on the training thread."""


def apply_transform(
    transform: UpdateTransform, delta: torch.Tensor, context: UpdateContext
) -> torch.Tensor:
    """The update to send: `transform`'s result, checked like an honest one.

    Raises:
        InvalidUpdateError: the result has another shape or dtype, or holds
            NaN/Inf (the same promise `LocalRun.pseudo_gradient` keeps:
            nothing non-finite leaves the client). Nothing was sent.
    """
    result = transform(delta, context)
    out = delta if result is None else result
    if out.shape != delta.shape or out.dtype != torch.float32:
        raise InvalidUpdateError(
            f"update_transform returned a {out.dtype} tensor of shape "
            f"{list(out.shape)}; expected float32 of shape {list(delta.shape)}. "
            "Nothing was sent"
        )
    if not bool(torch.isfinite(out.sum())):  # one reduction, as in LocalRun
        raise InvalidUpdateError(
            "update_transform returned NaN or Inf. Nothing was sent"
        )
    return out.contiguous()
