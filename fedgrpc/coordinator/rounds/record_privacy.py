"""The record-level DP claims clients make in their update headers, checked and kept.

A client training with DP-SGD (`fedgrpc.privacy.RecordDP`) states its ε at
δ, composed over every DP-SGD step it took, in each signed update header.
The coordinator cannot recompute it (it never sees the records, the batch
sizes or the noise), so it checks what any honest accountant's output
satisfies and refuses the rest with INVALID_ARGUMENT before a chunk counts:

* ε finite and >= 0, δ in (0, 1): dp-accounting returns nothing else;
* the same δ as the client's previous claim: ε at different δ cannot be
  compared, and a client's budget is stated at one δ;
* ε and the step count never below its previous claim: accounting only
  composes, so a lower figure is a reset ledger or a lie, either way not a
  figure an operator may show as the client's spend.

Claims are kept when the update is counted (`credit`), so a refused or
abandoned update never raises the bar. Plain Python: no gRPC, no torch.
"""

from __future__ import annotations

import math

from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.domain.requests import RecordPrivacyClaim, UpdateHeaderInfo
from fedgrpc.errors import InvalidUpdateError

EPSILON_SLACK = 1e-9
"""Relative slack of the never-decreases check: ε is recomputed from the whole
ledger each time, so float rounding alone must not refuse an honest client."""


def check_claim(client: ClientRecord, header: UpdateHeaderInfo) -> None:
    """Refuse a record-level DP claim no honest accountant makes.

    Raises:
        InvalidUpdateError: ε NaN, infinite or negative; δ outside (0, 1);
            δ changed; ε or steps lower than this client's last claim.
    """
    claim = header.record_dp
    if claim is None:
        return
    epsilon, delta = claim.epsilon, claim.delta
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise InvalidUpdateError(
            f"record_dp_epsilon is {epsilon}: an accountant's ε is finite and >= 0; "
            "send the ε your privacy ledger reports"
        )
    if not 0 < delta < 1:
        raise InvalidUpdateError(
            f"record_dp_delta is {delta}: δ must be in (0, 1) (typically below "
            "1 / number of records, e.g. 1e-5)"
        )
    last = client.record_dp
    if last is None:
        return
    if delta != last.delta:
        raise InvalidUpdateError(
            f"record_dp_delta changed from {last.delta:g} to {delta:g}: a client "
            "states its ε at one δ for the whole run"
        )
    if epsilon < last.epsilon * (1 - EPSILON_SLACK) or claim.steps < last.steps:
        raise InvalidUpdateError(
            f"record_dp_epsilon {epsilon:g} after {claim.steps} steps is below this "
            f"client's previous claim ({last.epsilon:g} after {last.steps} steps): "
            "privacy accounting never decreases; keep the client's ledger across "
            "rounds and restarts (RecordDP.state / RecordDP.restore)"
        )


def credit(client: ClientRecord, claim: RecordPrivacyClaim | None) -> None:
    """Keep a counted update's claim as the client's spend (None keeps the last)."""
    if claim is not None:
        client.record_dp = claim


def max_epsilon(clients: list[ClientRecord]) -> float:
    """The largest ε any client claimed (0.0 when none did)."""
    return max((c.record_dp.epsilon for c in clients if c.record_dp), default=0.0)
