"""CoordinatorService: protobuf in, runtime call, protobuf out.

Deliberately thin. Decisions live in `runtime` and `rounds`; message
conversion in `fedgrpc.wire.convert`; status mapping in `status`. What is
left here is the shape of each stream: which message may come when.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.coordinator import status
from fedgrpc.coordinator.registry import ClientRecord
from fedgrpc.coordinator.runtime import (
    CoordinatorRuntime,
    RoundStartedEvent,
    SessionEnd,
    SessionEvent,
)
from fedgrpc.coordinator.state import Outcome, RoundResult, Ticket
from fedgrpc.errors import FedGrpcError, InvalidUpdateError, ShuttingDownError
from fedgrpc.log import get_logger
from fedgrpc.wire.chunking import iter_chunks
from fedgrpc.wire.convert import (
    header_from_proto,
    join_from_proto,
    round_config_to_proto,
    spec_to_proto,
)
from fedgrpc.wire.frames import (
    ChunkFrame,
    decode_push_request,
    encode_model_chunk,
    serialize_or_pass,
)

if TYPE_CHECKING:
    from fedgrpc._proto.v1.coordinator_pb2_grpc import (
        _MaybeAsyncIterator as RequestStream,
    )
    from fedgrpc._proto.v1.coordinator_pb2_grpc import _ServicerContext as Context

log = get_logger(__name__)
PushPart = pb.PushUpdateRequest | ChunkFrame
"""What PushUpdate's deserializer yields: plain chunks arrive as `ChunkFrame`."""
DRAIN_MESSAGES = 16
"""Messages a refused PushUpdate may still send beyond one model's chunks."""
DRAIN_TIMEOUT_S = 60.0
"""Longest a refused PushUpdate is read on so the client hears the real status."""
OUTCOME_TO_PROTO = {
    Outcome.APPLIED: pb.ROUND_OUTCOME_APPLIED,
    Outcome.SKIPPED: pb.ROUND_OUTCOME_SKIPPED,
}


def session_event_to_proto(event: SessionEvent) -> pb.SessionResponse:
    """A runtime event as the message sessions carry."""
    if isinstance(event, RoundStartedEvent):
        return pb.SessionResponse(
            round_started=pb.RoundStarted(
                round_id=event.round_id, base_version=event.base_version
            )
        )
    if isinstance(event, RoundResult):
        return pb.SessionResponse(round_closed=round_closed_to_proto(event))
    return pb.SessionResponse(shutdown=pb.ShutdownNotice(reason=event.reason))


def round_closed_to_proto(result: RoundResult) -> pb.RoundClosed:
    """A closed round as clients see it."""
    return pb.RoundClosed(
        round_id=result.round_id,
        outcome=OUTCOME_TO_PROTO[result.outcome],
        model_version=result.model_version,
        num_updates=result.num_updates,
        reason=result.reason,
    )


class CoordinatorServicer:
    """The four RPCs of fedgrpc.v1.CoordinatorService."""

    def __init__(self, runtime: CoordinatorRuntime) -> None:
        self.runtime = runtime

    async def Join(self, request: pb.JoinRequest, context: Context) -> pb.JoinResponse:
        """Admit a client; see the proto for the status codes."""

        async def body() -> pb.JoinResponse:
            joined = self.runtime.join(join_from_proto(request))
            return pb.JoinResponse(
                client_id=joined.client.client_id,
                session_token=joined.client.session_token,
                run_id=self.runtime.run_id,
                round_config=round_config_to_proto(self.runtime.config),
                model_spec=spec_to_proto(joined.spec),
                current_round=joined.current_round,
                model_version=joined.model_version,
                seed_model=joined.seed_model,
            )

        return await status.unary(context, body)

    async def Session(
        self, request_iterator: RequestStream[pb.SessionRequest], context: Context
    ) -> AsyncIterator[pb.SessionResponse]:
        """Round events out, heartbeats in, until either side leaves."""
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        if first.WhichOneof("event") != "open":
            await status.abort(
                context, InvalidUpdateError("the first Session message must be open")
            )
        try:
            client, queue = self.runtime.open_session(
                first.open.client_id, first.open.session_token
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
        requests: RequestStream[pb.SessionRequest],
        client: ClientRecord,
        queue: asyncio.Queue[SessionEvent],
    ) -> None:
        reason = "client closed its session stream"
        try:
            async for request in requests:
                kind = request.WhichOneof("event")
                self.runtime.touch(client)
                if kind == "heartbeat":
                    continue
                if kind == "leave":
                    reason = f"client left: {request.leave.reason or 'no reason given'}"
                    break
        except Exception as exc:
            reason = f"session stream broke: {exc}"
        log.info("session_ending", client=client.client_id, reason=reason)
        queue.put_nowait(SessionEnd(reason, cause="client_left"))

    async def PushUpdate(
        self, request_iterator: AsyncIterator[PushPart], context: Context
    ) -> pb.PushUpdateResponse:
        """Header, chunks, commit; nothing counts until the commit checks out."""
        stream = aiter(request_iterator)

        async def body() -> pb.PushUpdateResponse:
            try:
                return await self._receive_update(stream)
            except FedGrpcError:
                await self._drain(stream)
                raise

        return await status.unary(context, body)

    async def _receive_update(
        self, stream: AsyncIterator[PushPart]
    ) -> pb.PushUpdateResponse:
        first = await anext(stream, None)
        if not isinstance(first, pb.PushUpdateRequest) or not first.HasField("header"):
            raise InvalidUpdateError("a PushUpdate stream must start with a header")
        ticket = self.runtime.admit(header_from_proto(first.header))
        try:
            return await self._stream_chunks(ticket, stream)
        except BaseException as exc:
            self.runtime.abandon(ticket, str(exc) or type(exc).__name__)
            raise

    async def _stream_chunks(
        self, ticket: Ticket, stream: AsyncIterator[PushPart]
    ) -> pb.PushUpdateResponse:
        check = self.runtime.chunk_check(ticket)
        payload: bytes | memoryview
        async for message in stream:
            if isinstance(message, ChunkFrame):  # the fast, zero-copy path
                seq, offset, count, payload = (
                    message.seq, message.offset, message.count, message.payload
                )  # fmt: skip
            elif message.HasField("chunk"):
                chunk = message.chunk
                seq, offset, count, payload = (
                    chunk.seq, chunk.offset, chunk.count, chunk.payload
                )  # fmt: skip
            elif message.HasField("commit"):
                check.finish(message.commit.num_chunks)
                in_round = await self.runtime.commit(ticket, check.payload_bytes)
                return pb.PushUpdateResponse(
                    round_id=ticket.round_id,
                    updates_in_round=in_round,
                    bytes_received=check.payload_bytes,
                )
            else:
                raise InvalidUpdateError("a PushUpdate stream has exactly one header")
            values = check.check(seq, offset, count, payload)
            self.runtime.add_chunk(ticket, offset, values)
        raise check.missing_commit()

    async def _drain(self, stream: AsyncIterator[PushPart]) -> None:
        """Read (and drop) what the client is still sending before refusing it.

        grpcio's client reports a stream refused mid-send as a bare INTERNAL
        error and loses the real status, so the coordinator lets the client
        finish writing first. Bounded by one model's worth of chunks (or
        DRAIN_MESSAGES before a model exists) and DRAIN_TIMEOUT_S; past that
        the refusal goes out anyway.
        """
        limit = DRAIN_MESSAGES + self.runtime.max_update_messages()

        async def drain() -> None:
            count = 0
            async for _ in stream:
                count += 1
                if count > limit:
                    return

        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await asyncio.wait_for(drain(), DRAIN_TIMEOUT_S)

    async def PullModel(
        self, request: pb.PullModelRequest, context: Context
    ) -> AsyncIterator[pb.PullModelResponse | bytes]:
        """Header, then the model's bytes in order, ~chunk_bytes per message."""
        async for message in status.streaming(context, self._pull(request)):
            yield message

    async def _pull(
        self, request: pb.PullModelRequest
    ) -> AsyncIterator[pb.PullModelResponse | bytes]:
        runtime = self.runtime
        async with runtime.pull(
            request.client_id, request.session_token, request.min_version
        ) as published:
            spec = runtime.engine.model.spec
            assert spec is not None
            yield pb.PullModelResponse(
                header=pb.ModelHeader(
                    model_version=published.version,
                    round_id=published.round_id,
                    model_spec_digest=spec.digest,
                    total_bytes=spec.num_bytes,
                )
            )
            view = published.data.numpy().data
            for offset, data in iter_chunks(view, runtime.config.chunk_bytes):
                if runtime.stopping:
                    raise ShuttingDownError("the coordinator is shutting down")
                yield encode_model_chunk(offset, data)
                runtime.bytes_sent += len(data)


def add_coordinator_service(
    servicer: CoordinatorServicer, server: grpc.aio.Server
) -> None:
    """Register CoordinatorService with PullModel passing pre-encoded chunks.

    The generated helper would serialize every response with protobuf; this
    one differs only in PullModel's serializer (`wire.frames`).
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Join": grpc.unary_unary_rpc_method_handler(
            servicer.Join,
            request_deserializer=pb.JoinRequest.FromString,
            response_serializer=pb.JoinResponse.SerializeToString,
        ),
        "Session": grpc.stream_stream_rpc_method_handler(
            servicer.Session,
            request_deserializer=pb.SessionRequest.FromString,
            response_serializer=pb.SessionResponse.SerializeToString,
        ),
        "PushUpdate": grpc.stream_unary_rpc_method_handler(
            servicer.PushUpdate,
            request_deserializer=decode_push_request,
            response_serializer=pb.PushUpdateResponse.SerializeToString,
        ),
        "PullModel": grpc.unary_stream_rpc_method_handler(
            servicer.PullModel,
            request_deserializer=pb.PullModelRequest.FromString,
            response_serializer=serialize_or_pass,
        ),
    }
    service = pb.DESCRIPTOR.services_by_name["CoordinatorService"].full_name
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, handlers),)
    )
