"""AdminService: a snapshot of the coordinator for operators, and the guard reset.

Who may call it is decided before any handler here runs (`admin_access`).
GetStatus pages its client list: under open enrollment a thousand clients
with 1 KiB names made one response larger than the 1 MiB a default gRPC
client accepts, and `fedgrpc status` failed for good. A page holds at most
`page_size` clients and never more than `STATUS_BYTES_BUDGET` in all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from fedgrpc._proto.v1 import admin_pb2 as pb
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.ops.round_costs import RoundCost
from fedgrpc.coordinator.round_mode import OTHER_REASON, RoundMode
from fedgrpc.coordinator.rounds.budget import PrivacyReport
from fedgrpc.coordinator.rounds.records import (
    Outcome,
    Phase,
    PublishedModel,
    RoundResult,
)
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.coordinator.rounds.sharding import own_range
from fedgrpc.coordinator.runtime import CoordinatorRuntime
from fedgrpc.coordinator.services.coordinator import OUTCOME_TO_PROTO
from fedgrpc.coordinator.strategy.trust import TrustBook
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.domain.requests import HashName
from fedgrpc.log import get_logger
from fedgrpc.wire.convert import HASH_TO_PROTO, round_config_to_proto
from fedgrpc.wire.frames import Malformed

if TYPE_CHECKING:
    from fedgrpc._proto.v1.admin_pb2_grpc import _ServicerContext as Context

log = get_logger(__name__)

_PHASES = {
    Phase.WAITING_FOR_MODEL: pb.ROUND_PHASE_WAITING_FOR_MODEL,
    Phase.COLLECTING: pb.ROUND_PHASE_COLLECTING,
    Phase.APPLYING: pb.ROUND_PHASE_APPLYING,
    Phase.STOPPING: pb.ROUND_PHASE_STOPPING,
    Phase.FINISHED: pb.ROUND_PHASE_FINISHED,
}


DEFAULT_PAGE_SIZE = 500
"""Clients per GetStatus page when the request names no page_size."""
MAX_PAGE_SIZE = 1000
STATUS_BYTES_BUDGET = 960_000
"""A page stays under this many serialized bytes: below 1 MiB (gRPC's
default receive limit) with room for one more client (names are at most
1,024 characters)."""
ROUNDS_BYTES_BUDGET = 480_000
"""Round summaries kept under this, oldest dropped first (100 rounds that
each select a thousand clients would list 100,000 ids)."""


def build_status_page(
    runtime: CoordinatorRuntime, page_size: int = 0, page_token: str = ""
) -> pb.GetStatusResponse:
    """One page of GetStatus: the whole snapshot, clients after `page_token`.

    Raises:
        ValueError: `page_token` was not issued here (INVALID_ARGUMENT).
    """
    after = _client_number(page_token) if page_token else 0
    size = page_size if 0 < page_size <= MAX_PAGE_SIZE else DEFAULT_PAGE_SIZE
    status = build_status(runtime, clients=False)
    while len(status.recent_rounds) > 1 and status.ByteSize() > ROUNDS_BYTES_BUDGET:
        del status.recent_rounds[0]
    budget = STATUS_BYTES_BUDGET - status.ByteSize()
    records = runtime.registry.all()
    status.total_clients = len(records)
    for record in records:
        if _client_number(record.client_id) <= after:
            continue
        if len(status.clients) >= size:
            break
        row = _client_status(record, runtime.engine.trust)
        budget -= row.ByteSize() + 4  # field tag and length prefix
        if budget < 0 and status.clients:
            break
        status.clients.append(row)
    if status.clients and status.clients[-1].client_id != records[-1].client_id:
        status.next_page_token = status.clients[-1].client_id
        status.clients_truncated = True
    return status


def _client_number(client_id: str) -> int:
    """The number in a client id (`c00042` -> 42): ids grow in join order."""
    digits = client_id[1:]
    if not client_id.startswith("c") or not digits.isdigit() or len(digits) > 12:
        raise ValueError(
            f"page_token {client_id[:32]!r} was not issued by this coordinator: "
            "send the next_page_token of the previous GetStatus, or none"
        )
    return int(digits)


def _client_status(c: ClientRecord, trust: TrustBook | None) -> pb.ClientStatus:
    dp = c.record_dp
    status = pb.ClientStatus(
        client_id=c.client_id,
        name=c.name,
        connected=c.connected,
        updates_accepted=c.updates_accepted,
        samples_contributed=c.samples_contributed,
        bytes_received=c.bytes_received,
        bytes_sent=c.bytes_sent,
        last_round=c.last_round,
        last_train_loss=c.last_train_loss,
        key_sha256=c.public_key.fingerprint if c.public_key else "",
        excluded_until_round=c.excluded_until_round,
        exclusion_reason=c.exclusion_reason,
        **_trust_fields(trust, c.client_id),
    )
    if dp is not None:  # its last record-level DP claim (all 0: none)
        status.record_dp_epsilon = dp.epsilon
        status.record_dp_delta = dp.delta
        status.record_dp_steps = dp.steps
    return status


def build_status(
    runtime: CoordinatorRuntime, *, clients: bool = True
) -> pb.GetStatusResponse:
    """The coordinator's state as one message (cheap: no tensor is touched).

    With every client (`clients`) for in-process callers, which have no
    message limit; the RPC sends `build_status_page`.
    """
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
        clients=[_client_status(c, engine.trust) for c in runtime.registry.all()]
        if clients
        else [],
        total_clients=len(runtime.registry.all()),
        bytes_received=runtime.run.bytes_received,
        bytes_sent=runtime.run.bytes_sent,
        recent_rounds=[
            _round_summary(r, mode, runtime.costs.get(r.round_id))
            for r in engine.history
        ],
        uptime_s=runtime.clock() - runtime.run.started_s,
        round_nonce=engine.round_nonce(),
        **_model_digest(published, runtime.config.update_hash),
        coordinator_key_sha256=runtime.enrollment.public_key.fingerprint,
        open_enrollment=runtime.enrollment.is_open,
        secure_aggregation=mode is not None,
        guard_trips=mode.guard_trips if mode is not None else 0,
        dense_fallback_rounds=mode.dense_fallback_rounds if mode is not None else 0,
        norm_guard_trips=engine.model.guard.trips,
        norm_guard_history=len(engine.model.guard.history),
        not_serving=not runtime.durable.serving,
        not_serving_reason=runtime.durable.not_serving_reason,
        **_privacy_fields(engine.privacy.report()),
        round_mode=runtime.config.round_mode,
        goodput=engine.goodput.ratio,
        compute_offered_s=engine.goodput.offered_s,
        compute_applied_s=engine.goodput.applied_s,
        **_shard_fields(runtime.config, engine.model.spec),
    )


def _model_digest(
    published: PublishedModel | None, run_hash: HashName
) -> dict[str, Any]:
    """model_sha256 and the hash it is under (`ModelDigests.preferred`)."""
    found = published.digests.preferred(run_hash) if published is not None else None
    if found is None:
        return {}
    name, digest = found
    return {"model_sha256": digest, "model_hash": HASH_TO_PROTO[name]}


def _privacy_fields(report: PrivacyReport) -> dict[str, Any]:
    """GetStatusResponse's privacy fields (mode "off" and zeros without it)."""
    accountant = (
        f"{report.accountant}/{report.neighbouring}" if report.neighbouring else ""
    )
    return {**report.status_fields(), "dp_accountant": accountant}


def _shard_fields(config: CoordinatorConfig, spec: ModelSpec | None) -> dict[str, Any]:
    """GetStatusResponse's shard fields: which shard, and its range once known."""
    own = None if spec is None else own_range(config, spec)
    return {
        "shard_index": config.shard_index,
        "shard_count": config.shard_count,
        "shard_range_start": own.coord_start if own is not None else 0,
        "shard_range_length": own.num_coordinates if own is not None else 0,
    }


def _trust_fields(trust: TrustBook | None, client_id: str) -> dict[str, Any]:
    """A client's trust columns of ClientStatus (defaults when trust is off)."""
    if trust is None:
        return {"trust_score": 1.0, "trust_weight_factor": 1.0}
    standing = trust.standing(client_id)
    return {
        "trust_score": standing.score,
        "trust_state": standing.state,
        "quarantined_until_round": standing.quarantined_until,
        "trust_weight_factor": standing.weight_factor(trust.settings),
    }


def _round_summary(
    r: RoundResult, mode: RoundMode | None, cost: RoundCost
) -> pb.RoundSummary:
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
        privacy_epsilon=r.privacy_epsilon,
        dp_clip_norm=r.dp_clip_norm,
        dp_noise_multiplier=r.dp_noise_multiplier,
        privacy_exhausted=r.privacy_exhausted,
        max_staleness=r.max_staleness,
        mean_eval_loss=r.mean_eval_loss,
        eval_reports=r.eval_reports,
        apply_s=cost.apply_s,
        checkpoint_s=cost.checkpoint_s,
        bytes_sent=cost.bytes_sent,
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
        """Snapshot of rounds, traffic and one page of clients."""
        if isinstance(request, Malformed):
            error = request.error()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        try:
            return build_status_page(
                self.runtime, request.page_size, request.page_token
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def ResetDivergenceGuard(
        self, request: pb.ResetDivergenceGuardRequest | Malformed, context: Context
    ) -> pb.ResetDivergenceGuardResponse:
        """Clear the divergence guards' histories (an operator's decision, logged)."""
        if isinstance(request, Malformed):
            error = request.error()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        runtime = self.runtime
        dropped = runtime.engine.model.guard.reset()
        mode = runtime.mode
        secure = mode.reset_guard() if mode is not None else 0
        current = runtime.engine.current
        round_id = current.round_id if current is not None else 0
        log.warning("divergence_guard_reset", round=round_id, norms_dropped=dropped,
                    secure_norms_dropped=secure, peer=context.peer())  # fmt: skip
        return pb.ResetDivergenceGuardResponse(
            norms_dropped=dropped, secure_norms_dropped=secure, round_id=round_id
        )
