"""When a round closes, how many updates it needs, and the result it leaves.

The closing rules of `rounds.RoundEngine` (close now or keep collecting;
the quorum) and the bookkeeping of a closed round (its `RoundResult` and
the reason it was skipped), as plain functions of the open round, the
config and the registry. The engine keeps the phase transitions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.registry import ClientRegistry
from fedgrpc.coordinator.state import OpenRound, Outcome, RoundResult


def close_reason(
    current: OpenRound,
    config: CoordinatorConfig,
    registry: ClientRegistry,
    clock: Callable[[], float],
) -> str | None:
    """Why the collecting round `current` should close now, or None to keep on.

    Voids `current` (sets `void_reason`) if pushes are still streaming
    `round_timeout_s` after its deadline. A round marked complete (a secure
    round's recovered sum) closes with that reason, not "deadline".
    """
    if current.void_reason is not None:
        return "void"
    if current.complete_reason is not None and not current.streaming:
        return current.complete_reason
    now = clock()
    if current.deadline_s is not None and now >= current.deadline_s:
        if not current.streaming:
            return "deadline"
        if now < current.deadline_s + config.round_timeout_s:
            return None  # let updates that started in time finish
        current.void_reason = (
            f"{len(current.streaming)} update(s) still streaming "
            "round_timeout_s after the deadline"
        )
        return "void"
    done = len(current.contributors)
    # Cheap tests first: this runs on every commit and session close, and
    # the scans below cost O(clients), O(clients^2) over a burst (issue 6).
    if current.streaming or done < config.min_clients:
        return None
    connected = {c.client_id for c in registry.connected()}
    if done >= quorum(current, config, registry) and connected <= current.contributors:
        return "all connected clients committed"
    return None


def quorum(
    current: OpenRound, config: CoordinatorConfig, registry: ClientRegistry
) -> int:
    """Updates `current` needs to be applied.

    `min_clients`, or `min_client_fraction` of the clients connected now
    plus those that pushed and left, whichever is more.
    """
    members = {c.client_id for c in registry.connected()}
    members |= current.contributors
    # -1e-9: 0.3 x 10 is 3.0000000000000004 in floats, and must need 3.
    share = math.ceil(config.min_client_fraction * len(members) - 1e-9)
    return max(config.min_clients, share)


def round_result(
    closing: OpenRound,
    config: CoordinatorConfig,
    applied: bool,
    reason: str,
    model_version: int,
    now: float,
) -> RoundResult:
    """The record of a closed round, with why it was skipped if it was."""
    if not applied:
        reason = skip_reason(closing, config, reason)
    first, last = closing.first_header_s, closing.last_commit_s
    return RoundResult(
        round_id=closing.round_id,
        outcome=Outcome.APPLIED if applied else Outcome.SKIPPED,
        model_version=model_version,
        num_updates=len(closing.contributors),
        reason=reason,
        duration_s=now - closing.opened_s,
        mean_train_loss=closing.loss_weighted_sum / max(1, closing.samples),
        bytes_received=closing.bytes_received,
        ingest_s=last - first if first is not None and last is not None else 0.0,
        ingest_cpu_s=max(0.0, closing.last_commit_cpu_s - closing.first_header_cpu_s),
    )


def skip_reason(closing: OpenRound, config: CoordinatorConfig, reason: str) -> str:
    """Why `closing` was not applied: its void reason, or the quorum it missed."""
    if closing.void_reason is not None:
        return closing.void_reason
    return (
        f"{len(closing.contributors)} update(s) by the {reason}, "
        f"the quorum is {closing.quorum} (min_clients "
        f"{config.min_clients}, min_client_fraction "
        f"{config.min_client_fraction:g})"
    )
