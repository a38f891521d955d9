"""Exception hierarchy shared by the coordinator and the client.

Imports no grpc: the coordinator maps these classes to status codes in
`fedgrpc.coordinator.services.status`, and the client maps received codes back to the
same classes in `fedgrpc.client.status`, carrying the server's message
verbatim. Users catch these, never `grpc.RpcError`.

Every message should say what was wrong, what was expected and what to do.
"""

from __future__ import annotations


class FedGrpcError(Exception):
    """Base class of every error fedgrpc raises on purpose."""


class ConfigError(FedGrpcError, ValueError):
    """A config value is out of range or inconsistent (raised at construction)."""


def check_config(condition: bool, field: str, value: object, allowed: str) -> None:
    """Raise `ConfigError` naming the field, the value and what is allowed."""
    if not condition:
        raise ConfigError(f"{field}={value!r} is invalid: expected {allowed}")


class UnknownClientError(FedGrpcError):
    """The caller is not a joined client, or could not prove who it is.

    A wrong session token; at Join, a key the coordinator does not allow, or
    no valid proof of possession (signature over a fresh challenge).
    Wire status: UNAUTHENTICATED.
    """


class InvalidUpdateError(FedGrpcError):
    """An update or model spec is malformed: shape, dtype, codec, range, NaN/Inf.

    Wire status: INVALID_ARGUMENT.
    """


class ModelMismatchError(InvalidUpdateError):
    """The client's model differs from the federation's model.

    Wire status: INVALID_ARGUMENT.
    """


class WrongRoundError(FedGrpcError):
    """The request does not fit the coordinator's round state.

    Wrong or closed round, stale base version, push before join, second update
    in one round. Wire status: FAILED_PRECONDITION.
    """


class ExcludedClientError(WrongRoundError):
    """The client is excluded from rounds for a while (`exclusion_reason` says why).

    A client that keeps breaking its uploads, or is hard-quarantined for the
    updates it sent. A kind of WrongRoundError so clients that handle those
    (keep training, push again in a later round) need nothing new. Wire
    status: FAILED_PRECONDITION.
    """


class IncompatibleClientError(FedGrpcError):
    """The client cannot take part as configured (inner steps, codecs).

    Wire status: FAILED_PRECONDITION, raised at Join.
    """


class TooLargeError(FedGrpcError):
    """A message, update or client count exceeds its limit.

    Wire status: RESOURCE_EXHAUSTED.
    """


class IncompleteUpdateError(FedGrpcError):
    """An update's chunks do not form one complete, ordered chain.

    A chunk missing, reordered or replayed from another round, client or
    update; a commit that does not close what arrived; or a stream that
    ended before its commit. Wire status: DATA_LOSS.
    """


class StreamIdleError(FedGrpcError):
    """A stream went quiet past its deadline, or a pull did not finish in time.

    The first message, the gap between chunks (`first_message_timeout_s`,
    `stream_idle_timeout_s`), or a whole pull (`pull_timeout_s`).
    Wire status: DEADLINE_EXCEEDED. Nothing the stream sent counts.
    """


class ShuttingDownError(FedGrpcError):
    """The coordinator is draining; retry later with backoff.

    Wire status: UNAVAILABLE.
    """


class CoordinatorUnavailableError(FedGrpcError):
    """The client could not reach the coordinator within its deadline.

    Raised by the client only (UNAVAILABLE or DEADLINE_EXCEEDED after retries).
    """


class UpstreamUnavailableError(FedGrpcError):
    """A leaf coordinator could not reach its root (aggregation trees).

    Raised by a leaf at its first Join, before it has a model to serve;
    clients retry it like any unreachable coordinator. Wire status: UNAVAILABLE.
    """


class InvalidKeyError(FedGrpcError, ValueError):
    """Bytes that should hold a key (raw or PEM) do not, or name an unknown algorithm.

    Raised by `fedgrpc.crypto`; a key received on the wire that fails this
    check will be refused at Join (UNAUTHENTICATED).
    """


class BadSignatureError(FedGrpcError):
    """A signature does not verify under the key it claims, or signed other bytes.

    A header, chunk or commit signature that fails, or a payload whose
    SHA-256 differs from the one its chunk signed. Wire status:
    PERMISSION_DENIED. The client raises it too for a model whose bytes or
    signature do not match the coordinator's key.
    """


class UntrustedCoordinatorError(FedGrpcError):
    """The coordinator's key is not the one this client was told to trust.

    Raised by the client only (`ClientConfig.coordinator_key`), before it
    signs anything for that coordinator.
    """


class IdentityFileError(FedGrpcError):
    """A key or certificate file cannot be written or read as expected.

    It exists and overwriting was not asked for, its directory cannot be
    created or written, or it does not hold the PEM it should. The message
    names the path. Local only: never a wire status.
    """


class CheckpointError(FedGrpcError):
    """A coordinator checkpoint cannot be written, or read back as written.

    Torn or corrupt files (bad magic, short, checksum mismatch) make the
    coordinator fall back to the previous checkpoint; a file written by a
    newer format, or for another model or outer optimizer, stops it from
    starting. The message names the path. Local only: never a wire status.
    """


class PrivacyBudgetExceededError(FedGrpcError):
    """One more DP-SGD step would take the client's ε(δ) past its `max_epsilon`.

    Raised by `fedgrpc.privacy.RecordDP` from inside `optimizer.step()`,
    before the step changes the model: everything trained so far stays
    private at the ε reported. Stop training and close the client (the
    coordinator's rounds go on without it), or raise `max_epsilon`
    knowingly. Local only: never a wire status.
    """
