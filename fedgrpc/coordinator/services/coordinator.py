"""CoordinatorService: protobuf in, one domain call, protobuf out.

Deliberately thin. Decisions live in `runtime`, `ingest` and `rounds`;
message conversion in `fedgrpc.wire`; status mapping in `status`. What is
left here is the shape of each stream: which message may come when. Proto
names stop here: nothing below `services/` sees a `_pb2` type.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.records import Outcome, RoundResult
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.coordinator.rounds.sharding import cuts_for
from fedgrpc.coordinator.rounds.weighting import saturating_add
from fedgrpc.coordinator.runtime import CoordinatorRuntime
from fedgrpc.coordinator.services import status
from fedgrpc.coordinator.services.pull_parts import (
    model_header,
    pull_range,
    steps_for,
)
from fedgrpc.coordinator.services.secagg_messages import secagg_message
from fedgrpc.coordinator.sessions import (
    HeartbeatReply,
    RoundStartedEvent,
    SecAggEvent,
    SessionEnd,
    SessionEvent,
    SessionQueue,
)
from fedgrpc.crypto.signing import CommitProof
from fedgrpc.domain.chunks import iter_chunks
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.errors import FedGrpcError, InvalidUpdateError, ShuttingDownError
from fedgrpc.log import get_logger
from fedgrpc.wire.convert import (
    header_from_proto,
    join_from_proto,
    round_config_to_proto,
    spec_to_proto,
)
from fedgrpc.wire.frames import (
    ChunkFrame,
    Malformed,
    chunk_proof,
    encode_model_chunk,
    parsed,
)
from fedgrpc.wire.secagg import server_event
from fedgrpc.wire.signed import (
    commit_proof,
    join_proof_from_proto,
    key_to_proto,
)

if TYPE_CHECKING:
    from fedgrpc._proto.v1.coordinator_pb2_grpc import (
        _MaybeAsyncIterator as RequestStream,
    )
    from fedgrpc._proto.v1.coordinator_pb2_grpc import _ServicerContext as Context

log = get_logger(__name__)
PushPart = pb.PushUpdateRequest | ChunkFrame | Malformed
"""What PushUpdate's deserializer yields: plain chunks arrive as `ChunkFrame`,
messages that do not parse as `Malformed` (refused with INVALID_ARGUMENT)."""
DRAIN_MESSAGES = 16
"""Messages a refused PushUpdate may still send beyond one model's chunks."""
DRAIN_TIMEOUT_S = 60.0
"""Longest a refused PushUpdate is read on so the client hears the real status."""
OUTCOME_TO_PROTO = {
    Outcome.APPLIED: pb.ROUND_OUTCOME_APPLIED,
    Outcome.SKIPPED: pb.ROUND_OUTCOME_SKIPPED,
}


def _chunk_or_commit(message: PushPart) -> ChunkFrame | CommitProof:
    """A chunk (as a `ChunkFrame`) or the commit; anything else is refused."""
    if isinstance(message, ChunkFrame):  # the fast, zero-copy path
        return message
    if isinstance(message, Malformed):
        raise message.error()
    if message.HasField("commit"):
        return commit_proof(message.commit)
    if not message.HasField("chunk"):
        raise InvalidUpdateError("a PushUpdate stream has exactly one header")
    c = message.chunk
    proof = chunk_proof(c.payload_sha256, c.prev_sha256, c.signature)
    return ChunkFrame(c.seq, c.offset, c.count, memoryview(c.payload), proof)


def _update_header(first: PushPart | None) -> pb.UpdateHeader:
    """The header that must open a PushUpdate stream."""
    if isinstance(first, Malformed):
        raise first.error()
    if not isinstance(first, pb.PushUpdateRequest) or not first.HasField("header"):
        raise InvalidUpdateError("a PushUpdate stream must start with a header")
    return first.header


def session_event_to_proto(event: SessionEvent) -> pb.SessionResponse:
    """A runtime event as the message sessions carry."""
    if isinstance(event, RoundStartedEvent):
        return pb.SessionResponse(
            round_started=pb.RoundStarted(
                round_id=event.round_id,
                base_version=event.base_version,
                round_nonce=event.nonce,
                deadline_unix_s=event.deadline_unix_s,
                not_selected=event.not_selected,
                seconds_left=event.seconds_left,
            )
        )
    if isinstance(event, RoundResult):
        return pb.SessionResponse(round_closed=round_closed_to_proto(event))
    if isinstance(event, SecAggEvent):
        return server_event(event.round_id, event.payload)
    if isinstance(event, HeartbeatReply):
        return pb.SessionResponse(heartbeat=pb.Heartbeat(sent_unix_s=event.sent_unix_s))
    return pb.SessionResponse(shutdown=pb.ShutdownNotice(reason=event.reason))


def round_closed_to_proto(result: RoundResult) -> pb.RoundClosed:
    """A closed round as clients see it."""
    return pb.RoundClosed(
        round_id=result.round_id,
        outcome=OUTCOME_TO_PROTO[result.outcome],
        model_version=result.model_version,
        num_updates=result.num_updates,
        reason=result.reason,
        run_finished=result.run_finished,
        privacy_epsilon=result.privacy_epsilon,
        privacy_delta=result.privacy_delta,
        max_epsilon=result.max_epsilon,
        dp_clip_norm=result.dp_clip_norm,
        dp_noise_multiplier=result.dp_noise_multiplier,
        privacy_exhausted=result.privacy_exhausted,
    )


def shard_map(config: CoordinatorConfig, spec: ModelSpec) -> dict[str, Any]:
    """JoinResponse's shard fields: this shard, every peer, the range cuts."""
    cuts = cuts_for(config, spec)
    if not cuts:
        return {}
    return {
        "shard_index": config.shard_index,
        "shard_peers": config.shard_peers,
        "shard_bounds": cuts,
    }


class CoordinatorServicer:
    """The five RPCs of fedgrpc.v1.CoordinatorService."""

    def __init__(self, runtime: CoordinatorRuntime) -> None:
        self.runtime = runtime
        self._coordinator_key = key_to_proto(runtime.enrollment.public_key)

    async def GetJoinChallenge(
        self, request: pb.GetJoinChallengeRequest | Malformed, context: Context
    ) -> pb.GetJoinChallengeResponse:
        """A single-use nonce for Join, and the coordinator's key."""

        async def body() -> pb.GetJoinChallengeResponse:
            parsed(request)
            self.runtime.run.check_running()
            challenge = self.runtime.enrollment.challenge()
            return pb.GetJoinChallengeResponse(
                nonce=challenge.nonce,
                run_id=self.runtime.run.run_id,
                coordinator_key=self._coordinator_key,
                expires_in_s=challenge.expires_in_s,
            )

        return await status.unary(context, body)

    async def Join(
        self, message: pb.JoinRequest | Malformed, context: Context
    ) -> pb.JoinResponse:
        """Authenticate, then admit a client; see the proto for the status codes."""

        async def body() -> pb.JoinResponse:
            runtime, request = self.runtime, parsed(message)
            key = runtime.authenticate_join(join_proof_from_proto(request))
            info, model = join_from_proto(request), runtime.engine.model
            if model.upstream is not None and model.spec is None:
                model.fetch_root(info.spec)  # a leaf: UNAVAILABLE until it has one
            joined = runtime.join(info, key)
            update_hash = joined.client.hash_name
            return pb.JoinResponse(
                client_id=joined.client.client_id,
                session_token=joined.client.session_token,
                run_id=runtime.run.run_id,
                round_config=round_config_to_proto(runtime.config, update_hash),
                model_spec=spec_to_proto(joined.spec),
                current_round=joined.current_round,
                model_version=joined.model_version,
                seed_model=joined.seed_model,
                coordinator_key=self._coordinator_key,
                round_nonce=joined.round_nonce,
                last_update_round=joined.client.last_round,
                last_applied_round=joined.client.last_applied_round,
                run_finished=joined.run_finished,
                **shard_map(runtime.config, joined.spec),
            )

        return await status.unary(context, body)

    async def Session(
        self,
        request_iterator: RequestStream[pb.SessionRequest | Malformed],
        context: Context,
    ) -> AsyncIterator[pb.SessionResponse]:
        """Round events out, heartbeats in, until either side leaves."""
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        try:
            opening = parsed(first)
            if opening.WhichOneof("event") != "open":
                raise InvalidUpdateError("the first Session message must be open")
            client, queue = self.runtime.open_session(
                opening.open.client_id, opening.open.session_token
            )
        except Exception as exc:
            await status.abort(context, exc)
        reader = asyncio.create_task(
            self._read_session(request_iterator, client, queue)
        )
        try:
            while True:
                event = await queue.get()
                if not isinstance(event, SessionEnd) or event.cause == "shutdown":
                    yield session_event_to_proto(event)
                if isinstance(event, SessionEnd):
                    if event.cause == "evicted":
                        await context.abort(grpc.StatusCode.UNAVAILABLE, event.reason)
                    return
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await self.runtime.close_session(client, queue)

    async def _read_session(
        self,
        requests: RequestStream[pb.SessionRequest | Malformed],
        client: ClientRecord,
        queue: SessionQueue,
    ) -> None:
        reason = "client closed its session stream"
        try:
            async for message in requests:
                request = parsed(message)  # garbage ends the session (below)
                kind = request.WhichOneof("event")
                self.runtime.touch(client)
                if kind == "heartbeat":
                    queue.put_nowait(HeartbeatReply(time.time()))
                    continue
                if kind == "leave":
                    reason = f"client left: {request.leave.reason or 'no reason given'}"
                    client.leaves_for_good = request.leave.final  # throwaway key
                    break
                if kind is not None and kind.startswith("secagg_"):
                    await secagg_message(self.runtime, client, request, queue)
        except Exception as exc:
            reason = f"session stream broke: {exc}"
        log.info("session_ending", client=client.client_id, reason=reason)
        queue.put_nowait(SessionEnd(reason, cause="client_left"))

    async def PushUpdate(
        self, request_iterator: AsyncIterator[PushPart], context: Context
    ) -> pb.PushUpdateResponse:
        """Header, chunks, commit; `ingest` verifies each chunk before adding it."""
        stream = aiter(request_iterator)

        async def body() -> pb.PushUpdateResponse:
            try:
                header = header_from_proto(_update_header(await anext(stream, None)))
                receipt = await self.runtime.ingest.receive(
                    header, stream, _chunk_or_commit
                )
            except FedGrpcError:
                await self._drain(stream)
                raise
            return pb.PushUpdateResponse(
                round_id=receipt.round_id,
                updates_in_round=receipt.updates_in_round,
                bytes_received=receipt.bytes_received,
                update_sha256=receipt.update_sha256,
            )

        return await status.unary(context, body)

    async def _drain(self, stream: AsyncIterator[PushPart]) -> None:
        """Read (and drop) what the client is still sending before refusing it.

        grpcio's client reports a stream refused mid-send as a bare INTERNAL
        error and loses the real status, so the coordinator lets the client
        finish writing first. Bounded by one model's worth of chunks (or
        DRAIN_MESSAGES before a model exists) and DRAIN_TIMEOUT_S; past that
        the refusal goes out anyway.
        """
        limit = DRAIN_MESSAGES + self.runtime.ingest.max_update_messages()

        async def drain() -> None:
            count = 0
            async for _ in stream:
                count += 1
                if count > limit:
                    return

        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await asyncio.wait_for(drain(), DRAIN_TIMEOUT_S)

    async def PullModel(
        self, request: pb.PullModelRequest | Malformed, context: Context
    ) -> AsyncIterator[pb.PullModelResponse | bytes]:
        """Header, then the model's bytes in order, ~chunk_bytes per message."""
        async with contextlib.aclosing(self._pull(request)) as pulled:  # frees
            async for message in status.streaming(context, pulled):  # the version
                yield message

    async def _pull(
        self, message: pb.PullModelRequest | Malformed
    ) -> AsyncGenerator[pb.PullModelResponse | bytes, None]:
        runtime, request = self.runtime, parsed(message)
        async with runtime.pull(
            request.client_id, request.session_token, request.min_version
        ) as published:
            spec = runtime.engine.model.require_spec()
            first, stop = pull_range(request, published, spec.num_bytes)
            steps = steps_for(request, published)
            client = runtime.registry.get(request.client_id)  # authenticated
            header = await model_header(
                published, client, spec,
                runtime.run.run_id, runtime.enrollment.identity, runtime.config,
            )  # fmt: skip
            if steps is not None:
                header.delta_from_version = request.held_version
                header.delta_codec = published.delta_codec
                yield pb.PullModelResponse(header=header)
                for part in steps:
                    if runtime.run.stopping:
                        raise ShuttingDownError("the coordinator is shutting down")
                    yield part
                    self._count_sent(client, len(part.delta.payload))
                return
            yield pb.PullModelResponse(header=header)
            held = published.byte_start  # a shard holds its range only
            view = published.data.numpy().data[first - held : stop - held]
            for offset, data in iter_chunks(view, runtime.config.chunk_bytes):
                offset += first
                if runtime.run.stopping:
                    raise ShuttingDownError("the coordinator is shutting down")
                yield encode_model_chunk(offset, data)
                self._count_sent(client, len(data))

    def _count_sent(self, client: ClientRecord | None, num_bytes: int) -> None:
        """Model payload bytes out: the run's and the client's."""
        self.runtime.run.bytes_sent += num_bytes
        if client is not None:
            client.bytes_sent = saturating_add(client.bytes_sent, num_bytes)
