"""Status codes from the coordinator become fedgrpc errors, details verbatim."""

from __future__ import annotations

import grpc
import pytest

from fedgrpc import errors
from fedgrpc.client.status import RpcName, error_from_rpc, status_code, translated

DETAILS = "round 7 closed; pull the model and retry next round"


def _rpc_error(code: grpc.StatusCode, details: str = DETAILS) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details
    )


@pytest.mark.parametrize(
    ("code", "rpc", "expected"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, "PushUpdate", errors.UnknownClientError),
        (grpc.StatusCode.INVALID_ARGUMENT, "PushUpdate", errors.InvalidUpdateError),
        (grpc.StatusCode.FAILED_PRECONDITION, "PushUpdate", errors.WrongRoundError),
        (grpc.StatusCode.FAILED_PRECONDITION, "Join", errors.IncompatibleClientError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Join", errors.TooLargeError),
        (grpc.StatusCode.DATA_LOSS, "PushUpdate", errors.IncompleteUpdateError),
        (grpc.StatusCode.UNAVAILABLE, "Session", errors.CoordinatorUnavailableError),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "PullModel",
            errors.CoordinatorUnavailableError,
        ),
    ],
)
def test_each_status_code_maps_to_its_error_with_details_verbatim(
    code: grpc.StatusCode, rpc: RpcName, expected: type[errors.FedGrpcError]
) -> None:
    error = error_from_rpc(_rpc_error(code), rpc)

    assert type(error) is expected
    assert str(error) == DETAILS


def test_unmapped_code_is_a_plain_fedgrpc_error_naming_the_code() -> None:
    error = error_from_rpc(_rpc_error(grpc.StatusCode.INTERNAL, "boom"), "Join")

    assert type(error) is errors.FedGrpcError
    assert "INTERNAL" in str(error)
    assert "boom" in str(error)


def test_empty_details_still_give_a_message() -> None:
    error = error_from_rpc(_rpc_error(grpc.StatusCode.UNAVAILABLE, ""), "Join")

    assert "Join failed with UNAVAILABLE" in str(error)


def test_bare_rpc_error_without_code_maps_to_base_error() -> None:
    bare = grpc.RpcError("no status")

    assert status_code(bare) is None
    assert type(error_from_rpc(bare, "Session")) is errors.FedGrpcError


def test_translated_reraises_as_fedgrpc_error_chained_to_the_rpc_error() -> None:
    original = _rpc_error(grpc.StatusCode.FAILED_PRECONDITION)

    with (
        pytest.raises(errors.WrongRoundError, match="round 7 closed") as raised,
        translated("PushUpdate"),
    ):
        raise original

    assert raised.value.__cause__ is original


def test_translated_leaves_other_exceptions_alone() -> None:
    with pytest.raises(KeyError), translated("PullModel"):
        raise KeyError("not grpc")


@pytest.mark.parametrize(
    ("code", "named", "expected"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "ModelMismatchError",
         errors.ModelMismatchError),
        # Only a known subclass of the code's class is taken: a peer naming
        # another class, or a class of another code, changes nothing.
        (grpc.StatusCode.INVALID_ARGUMENT, "SystemExit", errors.InvalidUpdateError),
        (grpc.StatusCode.FAILED_PRECONDITION, "ModelMismatchError",
         errors.WrongRoundError),
    ],
)  # fmt: skip
def test_trailing_metadata_refines_the_error_only_to_a_known_subclass(
    code: grpc.StatusCode, named: str, expected: type[errors.FedGrpcError]
) -> None:
    trailing = grpc.aio.Metadata(("fedgrpc-error-class", named))
    raw = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=DETAILS)

    error = error_from_rpc(raw, "PushUpdate")

    assert type(error) is expected
    assert str(error) == DETAILS
