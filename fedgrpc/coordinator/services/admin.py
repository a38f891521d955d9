"""AdminService: a read-only snapshot of the coordinator for operators."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from fedgrpc._proto.v1 import admin_pb2 as pb
from fedgrpc.coordinator.round_mode import OTHER_REASON, RoundMode
from fedgrpc.coordinator.rounds.records import Outcome, Phase, RoundResult
from fedgrpc.coordinator.runtime import CoordinatorRuntime
from fedgrpc.coordinator.services.coordinator import OUTCOME_TO_PROTO
from fedgrpc.wire.convert import round_config_to_proto
from fedgrpc.wire.frames import Malformed

if TYPE_CHECKING:
    from fedgrpc._proto.v1.admin_pb2_grpc import _ServicerContext as Context

_PHASES = {
    Phase.WAITING_FOR_MODEL: pb.ROUND_PHASE_WAITING_FOR_MODEL,
    Phase.COLLECTING: pb.ROUND_PHASE_COLLECTING,
    Phase.APPLYING: pb.ROUND_PHASE_APPLYING,
    Phase.STOPPING: pb.ROUND_PHASE_STOPPING,
    Phase.FINISHED: pb.ROUND_PHASE_FINISHED,
}


def build_status(runtime: CoordinatorRuntime) -> pb.GetStatusResponse:
    """The coordinator's state as one message (cheap: no tensor is touched)."""
    engine = runtime.engine
    phase = _PHASES[engine.phase]
    connected = len(runtime.registry.connected())
    if phase == pb.ROUND_PHASE_COLLECTING and connected < runtime.config.min_clients:
        phase = pb.ROUND_PHASE_WAITING_FOR_QUORUM
    current = engine.current
    published = engine.model.published
    spec = engine.model.spec
    mode = runtime.mode
    num_parameters = (
        spec.num_coordinates if spec and engine.model.master is not None else 0
    )
    return pb.GetStatusResponse(
        run_id=runtime.run.run_id,
        round_id=current.round_id if current else 0,
        phase=phase,
        model_version=engine.model.version,
        num_parameters=num_parameters,
        round_config=round_config_to_proto(runtime.config),
        clients=[
            pb.ClientStatus(
                client_id=c.client_id,
                name=c.name,
                connected=c.connected,
                updates_accepted=c.updates_accepted,
                samples_contributed=c.samples_contributed,
                last_round=c.last_round,
                last_train_loss=c.last_train_loss,
                key_sha256=c.public_key.fingerprint if c.public_key else "",
                excluded_until_round=c.excluded_until_round,
                exclusion_reason=c.exclusion_reason,
            )
            for c in runtime.registry.all()
        ],
        bytes_received=runtime.run.bytes_received,
        bytes_sent=runtime.run.bytes_sent,
        recent_rounds=[_round_summary(r, mode) for r in engine.history],
        uptime_s=runtime.clock() - runtime.run.started_s,
        round_nonce=engine.round_nonce(),
        model_sha256=published.sha256 if published is not None else b"",
        coordinator_key_sha256=runtime.enrollment.public_key.fingerprint,
        open_enrollment=runtime.enrollment.is_open,
        secure_aggregation=mode is not None,
        guard_trips=mode.guard_trips if mode is not None else 0,
        dense_fallback_rounds=mode.dense_fallback_rounds if mode is not None else 0,
    )


def _round_summary(r: RoundResult, mode: RoundMode | None) -> pb.RoundSummary:
    """One closed round; masked rounds add counts and the abort reason's name."""
    summary = pb.RoundSummary(
        round_id=r.round_id,
        outcome=OUTCOME_TO_PROTO[r.outcome],
        num_updates=r.num_updates,
        duration_s=r.duration_s,
        mean_train_loss=r.mean_train_loss,
        bytes_received=r.bytes_received,
        ingest_s=r.ingest_s,
        ingest_cpu_s=r.ingest_cpu_s,
        reason=r.reason if r.outcome is not Outcome.APPLIED else "",
        selected_clients=list(r.selected),
    )
    secure = mode.round_record(r.round_id) if mode is not None else None
    if secure is not None:
        summary.secure = True
        summary.participants = secure.participants
        summary.survivors = secure.survivors
        summary.positions = secure.positions
        summary.unmask_s = secure.unmask_s
        if r.outcome is not Outcome.APPLIED:
            summary.secure_abort_reason = secure.abort_reason or OTHER_REASON
    return summary


class AdminServicer:
    """fedgrpc.v1.AdminService (registered by `services.add_admin_service`)."""

    def __init__(self, runtime: CoordinatorRuntime) -> None:
        self.runtime = runtime

    async def GetStatus(
        self, request: pb.GetStatusRequest | Malformed, context: Context
    ) -> pb.GetStatusResponse:
        """Snapshot of rounds, clients and traffic."""
        if isinstance(request, Malformed):
            error = request.error()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return build_status(self.runtime)
