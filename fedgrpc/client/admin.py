"""An operator's view of a running coordinator: AdminService status and gRPC health.

What `fedgrpc status` and `fedgrpc guard-reset` call. Synchronous grpc (one
call, then exit), and plain dataclasses out, so the CLI never touches
protobuf types. TLS works as for `DiLoCoClient`: `ClientConfig.tls_ca` (and
a client certificate for mutual TLS). AdminService needs an admin credential
unless the caller is on the coordinator's host: the admin token
(`admin_token_file`, sent as `authorization: Bearer` metadata) or a client
certificate with the admin role.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedgrpc._proto.v1 import admin_pb2, admin_pb2_grpc, coordinator_pb2
from fedgrpc.client.connection.channel import (
    channel_credentials,
    channel_options,
    proxy_refusal,
    proxy_refusal_message,
)
from fedgrpc.client.status import status_code
from fedgrpc.config import ClientConfig
from fedgrpc.crypto.admin_token import bearer_metadata, read_admin_token
from fedgrpc.crypto.tls import load_client_tls
from fedgrpc.errors import CoordinatorUnavailableError, FedGrpcError

_PHASES = {
    admin_pb2.ROUND_PHASE_WAITING_FOR_MODEL: "waiting_for_model",
    admin_pb2.ROUND_PHASE_WAITING_FOR_QUORUM: "waiting_for_quorum",
    admin_pb2.ROUND_PHASE_COLLECTING: "collecting",
    admin_pb2.ROUND_PHASE_APPLYING: "applying",
    admin_pb2.ROUND_PHASE_STOPPING: "stopping",
    admin_pb2.ROUND_PHASE_FINISHED: "finished",
}
_OUTCOMES = {
    coordinator_pb2.ROUND_OUTCOME_APPLIED: "applied",
    coordinator_pb2.ROUND_OUTCOME_SKIPPED: "skipped",
}


@dataclass(frozen=True, slots=True)
class ClientRow:
    """One joined client and its credit."""

    client_id: str
    name: str
    connected: bool
    updates_accepted: int
    samples_contributed: int
    last_round: int
    last_train_loss: float
    trust_score: float = 1.0
    """In [0, 1]; 1 when the coordinator runs without trust scores."""
    trust_state: str = ""
    """trusted, soft, quarantined or probation; "" when trust is off."""
    quarantined_until_round: int = 0
    """First round a hard-quarantined client may push again (0: never)."""
    excluded_until_round: int = 0
    """Its pushes for rounds before this are refused (0: not excluded)."""
    exclusion_reason: str = ""
    record_dp_epsilon: float = 0.0
    """Record-level DP: ε its last counted update claimed."""
    record_dp_delta: float = 0.0
    """δ of that ε (0: it claims no record-level DP)."""
    record_dp_steps: int = 0
    bytes_received: int = 0
    """Update payload bytes it pushed into committed updates (up)."""
    bytes_sent: int = 0
    """Model bytes it pulled (down)."""
    """DP-SGD steps composed into that ε."""


@dataclass(frozen=True, slots=True)
class RoundRow:
    """One closed round."""

    round_id: int
    outcome: str
    num_updates: int
    duration_s: float
    mean_train_loss: float
    bytes_received: int
    secure: bool = False
    """Masked (secure aggregation); the fields below are 0 or "" otherwise."""
    participants: int = 0
    survivors: int = 0
    """Participants whose masked update reached the sum."""
    positions: int = 0
    """Coordinates of the sparse index set; 0 = dense."""
    secure_abort_reason: str = ""
    """Name of why a masked round was not applied (too_few_clients, ...)."""
    unmask_s: float = 0.0
    selected: tuple[str, ...] = ()
    """Clients client selection chose for it; empty with selection `all`."""
    privacy_epsilon: float = 0.0
    """The run's ε after this round (0 without privacy)."""
    privacy_exhausted: bool = False
    """Not applied: it would have spent past max_epsilon."""
    max_staleness: int = 0
    """buffered_async: versions its stalest update lagged the round's base."""


@dataclass(frozen=True, slots=True)
class PacingView:
    """How rounds are paced, and the goodput so far (GetStatus)."""

    round_mode: str = "sync"
    buffer_size: int = 0
    """buffered_async's K (0 in other modes)."""
    max_staleness: int = 0
    round_duration_s: float = 0.0
    """deadline's training seconds per round (0 in other modes)."""
    goodput: float = 0.0
    """Reported client training seconds in applied rounds / offered (0: none)."""
    compute_offered_s: float = 0.0
    compute_applied_s: float = 0.0
    fragments: int = 0
    """streaming's P (0 in other modes)."""
    streaming_overlap_steps: int = 0


@dataclass(frozen=True, slots=True)
class PrivacyView:
    """The run's client-level DP and budget (GetStatus)."""

    mode: str = "off"
    epsilon: float = 0.0
    """Spent so far, at `delta`."""
    delta: float = 0.0
    max_epsilon: float = 0.0
    """The budget (0: none)."""
    clip_norm: float = 0.0
    """S the next round clips to."""
    noise_multiplier: float = 0.0
    accountant: str = ""
    """Accountant/adjacency, e.g. rdp/add_or_remove_one."""


@dataclass(frozen=True, slots=True)
class CoordinatorStatus:
    """GetStatus, as plain data (`dataclasses.asdict` gives `--json`)."""

    run_id: str
    phase: str
    round_id: int
    model_version: int
    num_parameters: int
    min_clients: int
    inner_steps: int
    uptime_s: float
    bytes_received: int
    bytes_sent: int
    clients: list[ClientRow]
    recent_rounds: list[RoundRow]
    secure_aggregation: bool = False
    guard_trips: int = 0
    """Times the divergence guard of sparse masked rounds refused a round."""
    dense_fallback_rounds: int = 0
    total_clients: int = 0
    """Clients the coordinator holds (len(clients) unless `max_pages` cut it)."""
    norm_guard_trips: int = 0
    """Plain rounds the divergence guard refused (since the coordinator started)."""
    norm_guard_history: int = 0
    """Norms in the plain guard's window (under 3: warming up)."""
    not_serving_reason: str = ""
    """Why new model versions are held back and no round applies (a failed
    checkpoint write); "" while the coordinator serves."""
    privacy: PrivacyView = PrivacyView()
    pacing: PacingView = PacingView()


MAX_PAGES = 10_000
"""Pages `fetch_status` follows at most (10 million clients at 1,000 a page):
a coordinator that keeps answering with a next page cannot loop it forever."""


def fetch_status(
    target: str,
    config: ClientConfig | None = None,
    timeout_s: float = 10.0,
    *,
    admin_token_file: str = "",
    page_size: int = 0,
) -> CoordinatorStatus:
    """Call AdminService/GetStatus on `target` (host:port), every page of clients.

    Args:
        target: HOST:PORT of the coordinator.
        config: TLS settings (`tls_ca`, and for mutual TLS `tls_cert`,
            `tls_key`); None connects in plaintext.
        timeout_s: seconds each call may take.
        admin_token_file: a file holding the coordinator's admin token, sent
            as `authorization: Bearer` metadata; "" sends none (loopback, or
            a client certificate with the admin role in `config`).
        page_size: clients per call; 0 lets the coordinator choose.

    Raises:
        ConfigError: `admin_token_file` is unusable.
        CoordinatorUnavailableError: unreachable, or no answer in `timeout_s`.
        FedGrpcError: any other failure (UNAUTHENTICATED without a needed
            admin credential), naming the status code.
    """
    metadata: tuple[tuple[str, str], ...] = ()
    if admin_token_file:
        token = read_admin_token(admin_token_file, "admin_token_file")
        metadata = bearer_metadata(token)
    with _channel(target, config) as channel, _translated(target):
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.GetStatusRequest(page_size=page_size)
        first = reply = stub.GetStatus(request, timeout=timeout_s, metadata=metadata)
        clients = list(reply.clients)
        seen = {reply.next_page_token}
        for _ in range(MAX_PAGES):
            if not reply.next_page_token:
                break
            request.page_token = reply.next_page_token
            reply = stub.GetStatus(request, timeout=timeout_s, metadata=metadata)
            clients.extend(reply.clients)
            if reply.next_page_token in seen:  # not advancing: stop, keep what came
                break
            seen.add(reply.next_page_token)
    return _from_proto(first, clients)


@dataclass(frozen=True, slots=True)
class GuardReset:
    """What AdminService/ResetDivergenceGuard cleared."""

    norms_dropped: int
    """Recent update norms the plain rounds' guard forgot."""
    secure_norms_dropped: int
    """Recent norms the sparse secure rounds' guard forgot."""
    round_id: int
    """The round collecting at the reset (0: none)."""


def reset_divergence_guard(
    target: str, config: ClientConfig | None = None, timeout_s: float = 10.0
) -> GuardReset:
    """Call AdminService/ResetDivergenceGuard on `target` (host:port).

    Raises:
        CoordinatorUnavailableError: unreachable, or no answer in `timeout_s`.
        FedGrpcError: any other failure (a refused credential), naming the code.
    """
    with _channel(target, config) as channel, _translated(target):
        reply = admin_pb2_grpc.AdminServiceStub(channel).ResetDivergenceGuard(
            admin_pb2.ResetDivergenceGuardRequest(), timeout=timeout_s
        )
    return GuardReset(reply.norms_dropped, reply.secure_norms_dropped, reply.round_id)


def check_health(
    target: str, config: ClientConfig | None = None, timeout_s: float = 5.0
) -> str:
    """The grpc.health.v1 status of the whole server: SERVING, NOT_SERVING, ...

    Raises:
        CoordinatorUnavailableError: unreachable, or no answer in `timeout_s`.
    """
    with _channel(target, config) as channel, _translated(target):
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


@contextmanager
def _channel(target: str, config: ClientConfig | None) -> Iterator[grpc.Channel]:
    # The same options as a training client's channel, so `--proxy` (and
    # gRPC's proxy environment variables) reach the coordinator the same way.
    options = channel_options(config)
    if config is None or not config.tls_ca:
        channel = grpc.insecure_channel(target, options=options)
    else:
        tls = load_client_tls(config.tls_ca, config.tls_cert, config.tls_key)
        channel = grpc.secure_channel(target, channel_credentials(tls), options=options)
    with channel:
        yield channel


@contextmanager
def _translated(target: str) -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as exc:
        code = status_code(exc)
        details = exc.details() if code is not None else str(exc)
        refused = proxy_refusal(details or "")
        if refused is not None:
            raise CoordinatorUnavailableError(
                proxy_refusal_message(target, refused, details or "")
            ) from exc
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise CoordinatorUnavailableError(
                f"no answer from the coordinator at {target} ({code.name}: "
                f"{details}); check the address and that it is running"
            ) from exc
        name = code.name if code is not None else "an error"
        raise FedGrpcError(f"{target} answered {name}: {details}") from exc


def _from_proto(
    reply: admin_pb2.GetStatusResponse, clients: list[admin_pb2.ClientStatus]
) -> CoordinatorStatus:
    return CoordinatorStatus(
        run_id=reply.run_id,
        phase=_PHASES.get(reply.phase, "unknown"),
        round_id=reply.round_id,
        model_version=reply.model_version,
        num_parameters=reply.num_parameters,
        min_clients=reply.round_config.min_clients,
        inner_steps=reply.round_config.inner_steps,
        uptime_s=reply.uptime_s,
        bytes_received=reply.bytes_received,
        bytes_sent=reply.bytes_sent,
        clients=[
            ClientRow(
                c.client_id,
                c.name,
                c.connected,
                c.updates_accepted,
                c.samples_contributed,
                c.last_round,
                c.last_train_loss,
                c.trust_score,
                c.trust_state,
                c.quarantined_until_round,
                c.excluded_until_round,
                c.exclusion_reason,
                c.record_dp_epsilon,
                c.record_dp_delta,
                c.record_dp_steps,
                c.bytes_received,
                c.bytes_sent,
            )
            for c in clients
        ],
        recent_rounds=[
            RoundRow(
                r.round_id,
                _OUTCOMES.get(r.outcome, "unknown"),
                r.num_updates,
                r.duration_s,
                r.mean_train_loss,
                r.bytes_received,
                r.secure,
                r.participants,
                r.survivors,
                r.positions,
                r.secure_abort_reason,
                r.unmask_s,
                tuple(r.selected_clients),
                r.privacy_epsilon,
                r.privacy_exhausted,
                r.max_staleness,
            )
            for r in reply.recent_rounds
        ],
        secure_aggregation=reply.secure_aggregation,
        guard_trips=reply.guard_trips,
        dense_fallback_rounds=reply.dense_fallback_rounds,
        total_clients=reply.total_clients or len(clients),
        norm_guard_trips=reply.norm_guard_trips,
        norm_guard_history=reply.norm_guard_history,
        not_serving_reason=reply.not_serving_reason if reply.not_serving else "",
        privacy=PrivacyView(
            reply.privacy or "off",
            reply.privacy_epsilon,
            reply.privacy_delta,
            reply.max_epsilon,
            reply.dp_clip_norm,
            reply.dp_noise_multiplier,
            reply.dp_accountant,
        ),
        pacing=PacingView(
            reply.round_mode or "sync",
            reply.round_config.buffer_size,
            reply.round_config.max_staleness,
            reply.round_config.round_duration_s,
            reply.goodput,
            reply.compute_offered_s,
            reply.compute_applied_s,
            reply.round_config.fragments,
            reply.round_config.streaming_overlap_steps,
        ),
    )
