"""Secure-aggregation messages arriving on a Session stream: check, route, or reject.

The servicer's Session reader hands every `secagg_*` SessionRequest here.
A refused message never ends the stream (STYLE.md 3.8: round-level
outcomes are in-band events): it becomes a `SecAggRejection` carrying the
gRPC status code `coordinator.status` maps its error to, and the client is
dropped from that round.
"""

from __future__ import annotations

from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.coordinator.runtime import CoordinatorRuntime
from fedgrpc.coordinator.services.status import status_code_for
from fedgrpc.coordinator.sessions import SecAggEvent, SessionQueue
from fedgrpc.errors import BadSignatureError, FedGrpcError, WrongRoundError
from fedgrpc.log import get_logger
from fedgrpc.wire.secagg import Rejection, client_event_from_proto

log = get_logger(__name__)


async def secagg_message(
    runtime: CoordinatorRuntime,
    client: ClientRecord,
    request: pb.SessionRequest,
    queue: SessionQueue,
) -> None:
    """Handle one SecAgg SessionRequest; a refusal becomes a SecAggRejection.

    Never raises for a refused message: the Session stream stays open and
    the client counts as dropped from the round (secure_aggregation.proto).
    """
    round_id = 0
    try:
        decoded = client_event_from_proto(request)
        if decoded is None:
            return
        round_id, claimed, payload = decoded
        mode = runtime.mode
        if mode is None:
            raise WrongRoundError(
                "secure aggregation is off on this coordinator; do not send SecAgg "
                "messages (RoundConfig.secure_aggregation is false)"
            )
        if claimed != client.client_id:
            raise BadSignatureError(
                f"the message names client {claimed!r} but this session belongs to "
                f"{client.client_id!r}; a client may only speak for itself"
            )
        mode.receive(client.client_id, round_id, payload)
    except FedGrpcError as exc:
        code = status_code_for(exc)
        log.warning("secagg_message_rejected", client=client.client_id,
                    round=round_id, code=code.name, reason=str(exc))  # fmt: skip
        rejection = Rejection(round_id, int(code.value[0]), str(exc))
        queue.put_nowait(SecAggEvent(round_id, rejection))
        return
    await runtime.maybe_close_round()
