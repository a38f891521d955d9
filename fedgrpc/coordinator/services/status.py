"""fedgrpc errors -> gRPC status codes: the one place the mapping lives.

Handlers raise `FedGrpcError` subclasses from plain-Python code; `rpc_errors`
turns them into a status with the error's message, which was written for a
person to act on. Anything else is a bug: logged with its traceback and
returned as INTERNAL without internals leaking to the client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc

from fedgrpc import errors
from fedgrpc.coordinator.ops.metrics import count_rejection
from fedgrpc.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")
ERROR_CLASS_KEY = "fedgrpc-error-class"
"""Trailing metadata naming the refusal's exception class (say
`ModelMismatchError`), so a client can raise that subclass of the code's
class; clients that ignore it still get the code and the message."""

_CODES: tuple[tuple[type[errors.FedGrpcError], grpc.StatusCode], ...] = (
    (errors.UnknownClientError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.BadSignatureError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.InvalidUpdateError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.WrongRoundError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.IncompatibleClientError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.TooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.IncompleteUpdateError, grpc.StatusCode.DATA_LOSS),
    (errors.ShuttingDownError, grpc.StatusCode.UNAVAILABLE),
    (errors.UpstreamUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (errors.StreamIdleError, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def status_code_for(error: errors.FedGrpcError) -> grpc.StatusCode:
    """The wire status of a fedgrpc error (INTERNAL for unmapped ones)."""
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


async def abort(
    context: grpc.aio.ServicerContext[object, object], exc: Exception
) -> NoReturn:
    """End the call with the status for `exc`; logs refusals as warnings."""
    if isinstance(exc, errors.FedGrpcError):
        code = status_code_for(exc)
        count_rejection(code.name)
        log.warning("rpc_rejected", code=code.name, reason=str(exc))
        await context.abort(code, str(exc), ((ERROR_CLASS_KEY, type(exc).__name__),))
    log.error("rpc_failed", exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL, "internal coordinator error; see coordinator logs"
    )


async def unary(
    context: grpc.aio.ServicerContext[object, object], call: Callable[[], Awaitable[T]]
) -> T:
    """Run a unary handler body, turning raised errors into statuses."""
    try:
        return await call()
    except (grpc.aio.AbortError, grpc.aio.UsageError):
        raise
    except Exception as exc:
        await abort(context, exc)


async def streaming(
    context: grpc.aio.ServicerContext[object, object], stream: AsyncIterator[T]
) -> AsyncIterator[T]:
    """Re-yield a response stream, turning raised errors into statuses."""
    try:
        async for item in stream:
            yield item
    except (grpc.aio.AbortError, grpc.aio.UsageError):
        raise
    except Exception as exc:
        await abort(context, exc)
