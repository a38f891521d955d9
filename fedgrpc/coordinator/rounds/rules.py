"""The rules a round is run by: why an update is refused, and when a round closes.

Plain functions with no effects, beside `engine.RoundEngine`, which keeps the
phase transitions and consults these:

* refusals: an update header's codec, coordinate count, round, base version,
  one update per client, deadline; its chunks' round still collecting;
* closing: close now or keep collecting, the quorum, the `RoundResult` a
  closed round leaves and the reason it was skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds import pacing
from fedgrpc.coordinator.rounds.records import (
    OpenRound,
    Outcome,
    Phase,
    RoundResult,
    Ticket,
)
from fedgrpc.coordinator.rounds.registry import ClientRecord, ClientRegistry
from fedgrpc.domain.requests import UpdateHeaderInfo, wire_codec
from fedgrpc.errors import ExcludedClientError, InvalidUpdateError, WrongRoundError


def check_shape(
    config: CoordinatorConfig, num_coordinates: int, header: UpdateHeaderInfo
) -> None:
    """The header's codec is this federation's and it covers the whole model.

    Raises:
        InvalidUpdateError: wrong codec or coordinate count.
    """
    expected = (
        "dense-fp32" if header.is_initial_weights else wire_codec(config.codec_config)
    )
    if header.codec != expected:
        raise InvalidUpdateError(
            f"update codec {header.codec} is not {expected}, the codec for "
            f"{'initial weights' if header.is_initial_weights else 'updates'} "
            f"in this federation ({config.codec})"
        )
    if header.num_coordinates != num_coordinates:
        raise InvalidUpdateError(
            f"update has {header.num_coordinates} coordinates but the model has "
            f"{num_coordinates} parameters"
        )


def check_slot(
    current: OpenRound,
    client: ClientRecord,
    header: UpdateHeaderInfo,
    clock: Callable[[], float],
    *,
    spans: bool = False,
) -> None:
    """`client` may still push this update into the collecting round `current`.

    `spans`: the client sat out the rounds since its older base
    (`participants.may_span`), so that base is accepted.

    Raises:
        WrongRoundError: wrong round or base version, a second update in the
            round, or a round past its deadline.
    """
    if header.round_id != current.round_id:
        raise WrongRoundError(
            f"update is for round {header.round_id} but round {current.round_id} "
            "is collecting; pull the latest model and join the current round"
        )
    if header.base_version != current.base_version and not spans:
        raise WrongRoundError(
            f"update was computed from model version {header.base_version} but "
            f"round {current.round_id} starts from version {current.base_version}; "
            "pull the latest model"
        )
    busy = any(t.client is client for t in current.streaming.values())
    if client.client_id in current.contributors or busy:
        raise WrongRoundError(
            f"client {client.client_id} already sent an update for round "
            f"{current.round_id}"
        )
    if current.deadline_s is not None and clock() >= current.deadline_s:
        raise WrongRoundError(
            f"round {current.round_id} passed its deadline and takes no new "
            "updates; keep training and push in the next round"
        )


def check_not_excluded(current: OpenRound, client: ClientRecord) -> None:
    """Refuse an update from a client excluded from this round.

    Raises:
        ExcludedClientError: it is excluded until a later round.
    """
    if client.excluded_from(current.round_id):
        raise ExcludedClientError(
            f"client {client.client_id} is excluded from rounds before "
            f"{client.excluded_until_round} ({client.exclusion_reason}); keep "
            "training and push again then"
        )


def collecting_round(phase: Phase, current: OpenRound | None) -> OpenRound:
    """The open round if it is collecting updates.

    Raises:
        WrongRoundError: no round is collecting.
    """
    if phase is Phase.FINISHED:
        raise WrongRoundError(
            "the run finished (max_rounds reached); no round takes updates "
            "any more: pull the final model"
        )
    if phase is not Phase.COLLECTING or current is None:
        raise WrongRoundError(
            f"no round is collecting updates (phase {phase.value}); "
            "wait for the next RoundStarted event"
        )
    return current


def live_round(phase: Phase, current: OpenRound | None, ticket: Ticket) -> OpenRound:
    """The ticket's round if it still takes this update's chunks.

    Raises:
        WrongRoundError: the round closed while the update streamed.
    """
    if (
        phase is not Phase.COLLECTING
        or current is None
        or current.round_id != ticket.round_id
        or ticket.ticket_id not in current.streaming
    ):
        raise WrongRoundError(
            f"round {ticket.round_id} closed while this update was streaming; "
            "pull the latest model and push in the next round"
        )
    return current


def void_if_touched(current: OpenRound, ticket: Ticket, reason: str) -> bool:
    """A push that failed after reaching `current`'s sum voids it; True if so.

    The Accumulator decides (a spool drops the update's file instead).
    """
    total = current.total
    if not ticket.touched_sum or total is None:
        return False
    voided = total.abandon(ticket.ticket_id) or total.voids_on_abandon
    if not voided:
        return False
    if current.void_reason is None:
        current.void_reason = (
            f"the update from {ticket.client.client_id} failed after reaching "
            f"the round's sum ({reason}); its share cannot be removed exactly, "
            "so the round is discarded and clients keep their local progress"
        )
    return True


def close_reason(
    current: OpenRound,
    config: CoordinatorConfig,
    registry: ClientRegistry,
    clock: Callable[[], float],
) -> str | None:
    """Why the collecting round `current` should close now, or None to keep on.

    Pushes still streaming `round_timeout_s` after its deadline are dropped
    (a staged or spooled round closes without them) or, where they already
    reached an unstaged sum, void `current` (sets `void_reason`). A round
    marked complete (a secure round's recovered sum) closes with that
    reason, not "deadline".
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
        if current.total is not None and not current.total.voids_on_abandon:
            return "deadline (late pushes dropped)"  # they never reached the sum
        current.void_reason = (
            f"{len(current.streaming)} update(s) still streaming "
            "round_timeout_s after the deadline"
        )
        return "void"
    if pacing.buffer_full(config, current):
        return f"buffer full ({len(current.contributors)} updates)"
    done = len(current.contributors)
    # Cheap tests first: this runs on every commit and session close, and
    # the scans below cost O(clients), O(clients^2) over a burst (issue 6).
    if current.streaming or done < config.min_clients:
        return None
    connected = _expected(current, registry)
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
    members = _expected(current, registry) | current.contributors
    # -1e-9: 0.3 x 10 is 3.0000000000000004 in floats, and must need 3.
    share = math.ceil(config.min_client_fraction * len(members) - 1e-9)
    if config.round_mode == "buffered_async":  # a full buffer is always enough
        share = min(share, config.resolved_buffer_size)
    return max(config.min_clients, share)


def _expected(current: OpenRound, registry: ClientRegistry) -> set[str]:
    """Connected clients the round waits for: those it selected (all, by default).

    Excluded clients (`ClientRecord.excluded_until_round`) are never waited for.
    """
    connected = {
        c.client_id
        for c in registry.connected()
        if not c.excluded_from(current.round_id)
    }
    if current.selected is None:
        return connected
    return connected & set(current.selected)


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
        mean_train_loss=closing.loss_weighted_sum / (closing.loss_weight or 1.0),
        bytes_received=closing.bytes_received,
        ingest_s=last - first if first is not None and last is not None else 0.0,
        ingest_cpu_s=max(0.0, closing.last_commit_cpu_s - closing.first_header_cpu_s),
        selected=closing.selected or (),
        max_staleness=max(
            (closing.base_version - b for b in closing.contributor_bases.values()),
            default=0,
        ),
        mean_eval_loss=closing.eval_loss_sum / max(1, closing.eval_reports),
        eval_reports=closing.eval_reports,
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
