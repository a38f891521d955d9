"""Registering fedgrpc's services on a grpc.aio server, with fedgrpc's codecs.

The generated `add_*Servicer_to_server` helpers would (de)serialize every
message with protobuf and let grpcio answer a request that does not parse
with UNKNOWN. These differ in three ways: PullModel passes pre-encoded
chunks through (`wire.frames.serialize_or_pass`), PushUpdate decodes plain
chunks as zero-copy views (`wire.frames.decode_push_request`), and every
deserializer hands a message that does not parse to its handler as
`Malformed`, which refuses it with INVALID_ARGUMENT naming the type.
"""

from __future__ import annotations

from typing import Any

import grpc

from fedgrpc._proto.v1 import admin_pb2
from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.coordinator.admin import AdminServicer
from fedgrpc.coordinator.servicer import CoordinatorServicer
from fedgrpc.wire.frames import decode_push_request, lenient, serialize_or_pass


def add_coordinator_service(
    servicer: CoordinatorServicer, server: grpc.aio.Server
) -> None:
    """Register CoordinatorService (see the module docstring for how it differs)."""
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
            servicer.Session,
            request_deserializer=lenient(pb.SessionRequest),
            response_serializer=pb.SessionResponse.SerializeToString,
        ),
        "PushUpdate": grpc.stream_unary_rpc_method_handler(
            servicer.PushUpdate,
            request_deserializer=decode_push_request,
            response_serializer=pb.PushUpdateResponse.SerializeToString,
        ),
        "PullModel": grpc.unary_stream_rpc_method_handler(
            servicer.PullModel,
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
    }
    service = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, handlers),)
    )
