"""Why an update is refused: its header checked against the federation and round.

Plain functions with no effects, split from `rounds.RoundEngine` so the
engine keeps the transitions and this module every refusal rule (and its
message) for an update: its header's codec, coordinate count, round,
base version, one update per client, deadline; its chunks' round still
collecting.
"""

from __future__ import annotations

from collections.abc import Callable

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.registry import ClientRecord
from fedgrpc.coordinator.state import OpenRound, Phase, Ticket
from fedgrpc.domain.requests import UpdateHeaderInfo, wire_codec
from fedgrpc.errors import InvalidUpdateError, WrongRoundError


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
) -> None:
    """`client` may still push this update into the collecting round `current`.

    Raises:
        WrongRoundError: wrong round or base version, a second update in the
            round, or a round past its deadline.
    """
    if header.round_id != current.round_id:
        raise WrongRoundError(
            f"update is for round {header.round_id} but round {current.round_id} "
            "is collecting; pull the latest model and join the current round"
        )
    if header.base_version != current.base_version:
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


def collecting_round(phase: Phase, current: OpenRound | None) -> OpenRound:
    """The open round if it is collecting updates.

    Raises:
        WrongRoundError: no round is collecting.
    """
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
