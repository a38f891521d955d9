"""gRPC status codes -> fedgrpc errors: the client's one mapping table.

The coordinator turns each `FedGrpcError` into a status code whose details
are the error's message (`fedgrpc.coordinator.services.status`). This module turns the
code back into the same exception class, carrying those details verbatim, so
users catch `fedgrpc.errors.WrongRoundError` and never see `grpc.RpcError`.
The original `RpcError` stays reachable as `__cause__` for debugging.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import grpc

from fedgrpc import errors

RpcName = Literal["Join", "Session", "PushUpdate", "PullModel"]
"""The CoordinatorService method a status came from; it changes one mapping."""

_ERRORS: dict[grpc.StatusCode, type[errors.FedGrpcError]] = {
    grpc.StatusCode.UNAUTHENTICATED: errors.UnknownClientError,
    grpc.StatusCode.PERMISSION_DENIED: errors.BadSignatureError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidUpdateError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.WrongRoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.TooLargeError,
    grpc.StatusCode.DATA_LOSS: errors.IncompleteUpdateError,
    grpc.StatusCode.UNAVAILABLE: errors.CoordinatorUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.CoordinatorUnavailableError,
}


ERROR_CLASS_KEY = "fedgrpc-error-class"
"""Trailing metadata in which the coordinator names the exception class."""
_SUBCLASSES: dict[str | bytes, type[errors.FedGrpcError]] = {
    "ModelMismatchError": errors.ModelMismatchError,
    "ExcludedClientError": errors.ExcludedClientError,
}
"""Refinements of `_ERRORS` a status may name (`error_from_rpc`)."""


def status_code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    """The status code of a failed call, or None for a bare `grpc.RpcError`.

    Every RpcError grpc raises is also a `grpc.Call` or an `AioRpcError`, but
    the base class itself has no `code()`: guard so a bare one still maps.
    """
    if not callable(getattr(exc, "code", None)):
        return None
    return exc.code()


def error_from_rpc(exc: grpc.RpcError, rpc: RpcName) -> errors.FedGrpcError:
    """The fedgrpc exception for a failed call, with the server's details verbatim.

    FAILED_PRECONDITION means "wrong round" everywhere except at Join, where
    it means the client's inner_steps or codecs do not fit the federation
    (`IncompatibleClientError`). Codes outside the table (INTERNAL, UNKNOWN,
    CANCELLED, ...) become a plain `FedGrpcError` naming the code, because
    they are bugs or local cancellations, not rejections a caller handles.

    Args:
        exc: The error a sync or grpc.aio call raised.
        rpc: The method that failed.

    Returns:
        The exception to raise (the caller chains `from exc`).
    """
    code = status_code(exc)
    if code is None:
        return errors.FedGrpcError(f"{rpc} failed: {exc}")
    details = exc.details() or ""
    if code is grpc.StatusCode.FAILED_PRECONDITION and rpc == "Join":
        return errors.IncompatibleClientError(details)
    error_class = _ERRORS.get(code)
    if error_class is None:
        return errors.FedGrpcError(f"{rpc} failed with {code.name}: {details}")
    error_class = _refined(exc, error_class)
    return error_class(details or f"{rpc} failed with {code.name}")


def _refined(
    exc: grpc.RpcError, error_class: type[errors.FedGrpcError]
) -> type[errors.FedGrpcError]:
    """The subclass the coordinator named in its trailing metadata, if allowed.

    Only a known subclass of what the status code maps to is taken, so a
    coordinator (or a proxy) naming anything else changes nothing.
    """
    trailing = getattr(exc, "trailing_metadata", None)
    metadata = trailing() if callable(trailing) else None
    for key, value in metadata or ():
        refined = _SUBCLASSES.get(value) if key == ERROR_CLASS_KEY else None
        if refined is not None and issubclass(refined, error_class):
            return refined
    return error_class


@contextmanager
def translated(rpc: RpcName) -> Iterator[None]:
    """Re-raise any `grpc.RpcError` inside the block as its fedgrpc error.

    Works around `await` expressions too: the block's coroutine code runs
    inside the `with`, so one wrapper covers a whole streaming call.
    """
    try:
        yield
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, rpc) from exc
