"""Building, running and stopping the coordinator's grpc.aio server.

Three ways in, one builder: `serve` (the daemon: blocks until SIGTERM or
SIGINT), `start_coordinator` (inside a running event loop) and
`serve_in_thread` (a coordinator on a background thread, for tests, benches
and `fedgrpc simulate`).

Services are registered by `add_coordinator_service` and `add_admin_service`
rather than the generated `add_*Servicer_to_server` helpers, which would
(de)serialize every message with protobuf and let grpcio answer a request
that does not parse with UNKNOWN. Ours differ in three ways: PullModel passes
pre-encoded chunks through (`wire.frames.serialize_or_pass`), PushUpdate
decodes plain chunks as zero-copy views (`wire.frames.decode_push_request`),
and every deserializer hands a message that does not parse to its handler as
`Malformed`, which refuses it with INVALID_ARGUMENT naming the type.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedgrpc._proto.v1 import admin_pb2
from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.faults import NO_FAULTS, FaultHooks
from fedgrpc.coordinator.runtime import CoordinatorRuntime
from fedgrpc.coordinator.secure.mode import SecureMode
from fedgrpc.coordinator.services.admin import AdminServicer
from fedgrpc.coordinator.services.admin_access import AdminGuard, AdminPolicy
from fedgrpc.coordinator.services.coordinator import CoordinatorServicer
from fedgrpc.coordinator.services.http_app import DashboardServer, start_dashboard
from fedgrpc.coordinator.services.stream_guard import StreamGuard
from fedgrpc.coordinator.shards import ShardLink, ShardServicer, add_shard_service
from fedgrpc.coordinator.strategy.wiring import NO_PLUGINS, StagePlugins
from fedgrpc.coordinator.tree import RootLink
from fedgrpc.crypto.tls import ServerTLS, load_server_tls
from fedgrpc.errors import ConfigError
from fedgrpc.log import get_logger
from fedgrpc.wire.frames import decode_push_request, lenient, serialize_or_pass

log = get_logger(__name__)
SHUTDOWN_GRACE_S = 5.0
"""Seconds in-flight calls get to finish after SIGTERM."""
SHUTDOWN_REASON = "coordinator shutting down"
"""What sessions are told when the coordinator stops for any other reason."""
CALLS_PER_CLIENT = 4
"""New calls one client can start at once: Session, PushUpdate, PullModel, Join."""
GRPC_PENDING_CALLS_DEFAULT = 1000
"""grpc core's own `grpc.server.max_pending_requests`; we never go below it."""
_SERVICES = (
    pb.DESCRIPTOR.services_by_name["CoordinatorService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


@dataclass
class RunningCoordinator:
    """A started server and its runtime."""

    server: grpc.aio.Server
    runtime: CoordinatorRuntime
    address: str
    """host:port actually bound (the real port when `listen` asked for 0)."""
    health_servicer: health.aio.HealthServicer
    http: DashboardServer | None = None
    """The dashboard's HTTP server (`http_listen`), if configured."""

    async def stop(
        self, grace_s: float = SHUTDOWN_GRACE_S, reason: str | None = None
    ) -> None:
        """Drain: health NOT_SERVING, tell clients, end calls, checkpoint, close.

        A round being applied finishes (with its checkpoint); an open round
        is abandoned. The final checkpoint adds the clients' credit and the
        round history since the last applied round.
        """
        log.info("coordinator_stopping", address=self.address)
        await self.health_servicer.enter_graceful_shutdown()
        upstream = self.runtime.engine.model.upstream
        if upstream is not None:  # a leaf: wakes a round waiting on the root
            await asyncio.to_thread(upstream.close)
        await self.runtime.stop(reason or SHUTDOWN_REASON)
        await self.server.stop(grace_s)
        await self.runtime.save_checkpoint()
        if self.http is not None:
            await self.http.stop()
        self.runtime.metrics.stop()
        self.runtime.checkpoints.close()
        log.info("coordinator_stopped", address=self.address)


def add_coordinator_service(
    servicer: CoordinatorServicer, server: grpc.aio.Server, guard: StreamGuard
) -> None:
    """Register CoordinatorService (see the module docstring for how it differs).

    Its three streams go through `guard`: counted per connection and in
    total, with deadlines on their first message, between chunks and on pulls.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "GetJoinChallenge": grpc.unary_unary_rpc_method_handler(
            servicer.GetJoinChallenge,
            request_deserializer=lenient(pb.GetJoinChallengeRequest),
            response_serializer=pb.GetJoinChallengeResponse.SerializeToString,
        ),
        "Join": grpc.unary_unary_rpc_method_handler(
            servicer.Join,
            request_deserializer=lenient(pb.JoinRequest),
            response_serializer=pb.JoinResponse.SerializeToString,
        ),
        "Session": grpc.stream_stream_rpc_method_handler(
            guard.session(servicer.Session),
            request_deserializer=lenient(pb.SessionRequest),
            response_serializer=pb.SessionResponse.SerializeToString,
        ),
        "PushUpdate": grpc.stream_unary_rpc_method_handler(
            guard.push(servicer.PushUpdate),
            request_deserializer=decode_push_request,
            response_serializer=pb.PushUpdateResponse.SerializeToString,
        ),
        "PullModel": grpc.unary_stream_rpc_method_handler(
            guard.pull(servicer.PullModel),
            request_deserializer=lenient(pb.PullModelRequest),
            response_serializer=serialize_or_pass,
        ),
    }
    service = pb.DESCRIPTOR.services_by_name["CoordinatorService"].full_name
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, handlers),)
    )


def add_admin_service(servicer: AdminServicer, server: grpc.aio.Server) -> None:
    """Register AdminService with a deserializer that tolerates garbage."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "GetStatus": grpc.unary_unary_rpc_method_handler(
            servicer.GetStatus,
            request_deserializer=lenient(admin_pb2.GetStatusRequest),
            response_serializer=admin_pb2.GetStatusResponse.SerializeToString,
        ),
        "ResetDivergenceGuard": grpc.unary_unary_rpc_method_handler(
            servicer.ResetDivergenceGuard,
            request_deserializer=lenient(admin_pb2.ResetDivergenceGuardRequest),
            response_serializer=(
                admin_pb2.ResetDivergenceGuardResponse.SerializeToString
            ),
        ),
    }
    service = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, handlers),)
    )


def make_runtime(
    config: CoordinatorConfig,
    faults: FaultHooks = NO_FAULTS,
    *,
    plugins: StagePlugins = NO_PLUGINS,
) -> CoordinatorRuntime:
    """The runtime `config` asks for; with secure aggregation it holds `SecureMode`.

    The one place the plain coordinator meets a round mode: composition here,
    so the runtime, ingest and rounds never import `secure/`. `plugins`: a
    user's Aggregator / OuterOptimizer objects (the Python API), which win
    over the config's names.

    Raises:
        ConfigError: a bad stage or an impossible combination of stages.
    """
    mode = SecureMode if config.secure_aggregation else None
    runtime = CoordinatorRuntime(config, faults=faults, mode=mode, plugins=plugins)
    if config.upstream:  # a leaf of an aggregation tree (`coordinator.tree`)
        runtime.engine.model.upstream = RootLink(config)
    if config.shard_count > 1:  # parameter sharding (`coordinator.shards`)
        runtime.engine.shard_gate = ShardLink(config)
        runtime.engine.strike = runtime.ingest.broken.record
    return runtime


def server_options(config: CoordinatorConfig) -> list[tuple[str, int]]:
    """Channel arguments: chunk-sized messages, no port sharing, a call backlog.

    grpc core queues a call that arrives before the aio server has asked for
    the next one. Past `grpc.server.max_pending_requests` queued calls
    (default 1,000, server-wide) it refuses new ones at random, surely at the
    hard limit (default 3,000): load shedding for servers with independent
    callers. A coordinator's cohort arrives at once by design (every Session
    at start or restart, every PushUpdate when a round opens): with 2,000
    clients 69 Sessions (3.5%) were refused and the round waited for them
    forever (issue 6). So the backlog holds `CALLS_PER_CLIENT` calls for each
    of `max_clients`.
    """
    pending = max(GRPC_PENDING_CALLS_DEFAULT, CALLS_PER_CLIENT * config.max_clients)
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # Two coordinators must never silently share a port.
        ("grpc.so_reuseport", 0),
        ("grpc.server.max_pending_requests", pending),
        ("grpc.server.max_pending_requests_hard_limit", 2 * pending),
    ]


def max_concurrent_rpcs(config: CoordinatorConfig) -> int:
    """The cap grpc itself puts on calls in flight, over every service.

    A backstop behind `StreamGuard`, which refuses our three streams first
    with a message naming the setting: this one also bounds what the guard
    does not see (health Watch and reflection streams, unary bursts), and is
    twice the stream cap so a cohort's Joins never meet it.
    """
    return 2 * config.stream_limits(config.max_clients).total


async def start_coordinator(
    config: CoordinatorConfig,
    faults: FaultHooks = NO_FAULTS,
    *,
    plugins: StagePlugins = NO_PLUGINS,
) -> RunningCoordinator:
    """Bind, start serving and write the ready file.

    `faults`: test-only failure points (`coordinator.faults`).

    Raises:
        ConfigError: the listen address cannot be bound, the TLS files are
            unusable (not PEM, key not matching the certificate, expired), or
            the identity settings are (see `coordinator.enrollment`).
    """
    tls = _load_tls(config)  # unusable files fail first, before anything logs
    admin = AdminGuard(AdminPolicy.from_config(config))
    server = grpc.aio.server(
        options=server_options(config),
        interceptors=(admin,),
        maximum_concurrent_rpcs=max_concurrent_rpcs(config),
    )
    runtime = make_runtime(config, faults, plugins=plugins)
    guard = StreamGuard(config)
    add_coordinator_service(CoordinatorServicer(runtime), server, guard)
    add_admin_service(AdminServicer(runtime), server)
    if config.shard_count > 1:
        add_shard_service(ShardServicer(config), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        reflection.enable_server_reflection(
            (*_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    port = _bind(server, config.listen, tls)
    if config.metrics_listen:
        runtime.metrics.serve(
            config.metrics_listen,
            read_timeout_s=config.metrics_read_timeout_s,
            max_connections=config.metrics_max_connections,
        )
    http = start_dashboard(config, runtime) if config.http_listen else None
    await runtime.start()
    await server.start()
    for service in ("", *_SERVICES):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    runtime.durable.watch(functools.partial(report_serving, health_servicer))
    host = config.listen.rsplit(":", 1)[0]
    address = f"{host}:{port}"
    if config.ready_file:
        write_ready_file(Path(config.ready_file), address)
    log.info(
        "coordinator_serving",
        address=address,
        run_id=runtime.run.run_id,
        min_clients=config.min_clients,
        inner_steps=config.inner_steps,
        outer_optimizer=config.outer_optimizer,
        coordinator_key=runtime.enrollment.public_key.fingerprint,
        enrollment="open" if runtime.enrollment.is_open else "allowed_keys",
        update_signatures=config.update_signatures,
        update_hash=config.update_hash,
        admin_access=admin.policy.mode,
        reflection=config.reflection,
        **_tls_fields(tls),
    )
    return RunningCoordinator(server, runtime, address, health_servicer, http)


async def report_serving(servicer: health.aio.HealthServicer, serving: bool) -> None:
    """Health of the server ("") and CoordinatorService follows `DurableGate`.

    NOT_SERVING while a failed checkpoint write holds new versions back, so
    a load balancer or orchestrator sees it; AdminService stays SERVING: an
    operator reads why in `fedgrpc status`.
    """
    status = health_pb2.HealthCheckResponse
    for service in ("", _SERVICES[0]):
        await servicer.set(service, status.SERVING if serving else status.NOT_SERVING)


def _load_tls(config: CoordinatorConfig) -> ServerTLS | None:
    if not config.tls_cert:
        return None
    return load_server_tls(config.tls_cert, config.tls_key, config.tls_client_ca)


def _bind(server: grpc.aio.Server, listen: str, tls: ServerTLS | None) -> int:
    """Add the listening port, TLS if configured; returns the bound port."""
    try:
        if tls is None:
            return server.add_insecure_port(listen)
        return server.add_secure_port(listen, server_credentials(tls))
    except RuntimeError as exc:
        raise ConfigError(
            f"cannot listen on {listen}: {exc}; is another process using "
            "the port? use port 0 to pick a free one"
        ) from exc


def server_credentials(tls: ServerTLS) -> grpc.ServerCredentials:
    """The credentials for `tls`; with a client CA, client certs are required.

    `require_client_auth` makes the handshake itself refuse a client without
    a certificate chaining to `client_ca`, before any RPC handler runs.
    """
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.certificate_chain)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.client_ca is not None,
    )


def _tls_fields(tls: ServerTLS | None) -> dict[str, str | None]:
    """Log fields saying how the port is secured: fingerprints, never keys."""
    if tls is None:
        return {"tls": "off"}
    return {
        "tls": tls.mode,
        "cert_sha256": tls.certificate_sha256,
        "client_ca_sha256": tls.client_ca_sha256,
    }


def write_ready_file(path: Path, address: str) -> None:
    """Write `address` atomically, so a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as tmp:
        tmp.write(address + "\n")
    os.replace(tmp.name, path)


async def serve(config: CoordinatorConfig, faults: FaultHooks = NO_FAULTS) -> None:
    """Run the coordinator until SIGTERM or SIGINT, or the run finished; stop cleanly.

    With `max_rounds`, the run finishes when its last round closes; the
    coordinator then stays up while clients pull the final model and leave
    (at most `session_timeout_s`), and returns (`fedgrpc serve` exits 0).
    """
    running = await start_coordinator(config, faults)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    signalled = asyncio.create_task(stop.wait())
    finished = asyncio.create_task(
        running.runtime.wait_finished(config.session_timeout_s)
    )
    await asyncio.wait((signalled, finished), return_when=asyncio.FIRST_COMPLETED)
    for task in (signalled, finished):
        task.cancel()
    await asyncio.gather(signalled, finished, return_exceptions=True)
    finished_run = running.runtime.engine.finished
    await running.stop(reason="the run finished" if finished_run else SHUTDOWN_REASON)
