"""Why a secure-aggregation round stops: one reason enum, one error per reason.

Two kinds of failure, kept apart on purpose:

- A *message* the coordinator refuses (wrong phase, malformed vector, bad
  signature on one client's keys) raises the shared errors of
  `fedgrpc.errors` (`WrongRoundError`, `InvalidUpdateError`,
  `BadSignatureError`): the round state is unchanged and that client simply
  counts as dropped.
- A *round* that cannot or must not go on raises a `SecAggAbortError`
  subclass carrying an `AbortReason`. On a client that is a refusal to
  continue (it will not reveal anything more); on the coordinator it ends the
  round with nothing applied. The gRPC integration sends the reason in-band
  on the Session stream (STYLE.md 3.8: round outcomes are events with a
  reason enum, not statuses), so `AbortReason` values are wire-stable names.

These live here rather than in `fedgrpc/errors.py` only because secagg landed
as a self-contained package; they subclass `FedGrpcError` like the rest.
"""

from __future__ import annotations

from enum import StrEnum

from fedgrpc.errors import FedGrpcError


class AbortReason(StrEnum):
    """Why a round of secure aggregation was abandoned (wire-stable names)."""

    TOO_FEW_CLIENTS = "too_few_clients"
    """A neighbourhood fell below the Shamir threshold t: a secret could not be
    recovered, or revealing it would leave too few masks on an input."""
    BAD_SIGNATURE = "bad_signature"
    """A peer's key advertisement or survivor-list signature does not verify."""
    BAD_KEY = "bad_key"
    """A peer's X25519 key is malformed or of low order (no shared secret)."""
    TAMPERED_SHARE = "tampered_share"
    """An encrypted Shamir share failed AES-GCM authentication."""
    INCONSISTENT_SHARES = "inconsistent_shares"
    """Shamir shares do not lie on one polynomial, or repeat a share id."""
    INCONSISTENT_SURVIVORS = "inconsistent_survivors"
    """The consistency check failed: survivor lists differ between clients."""
    PROTOCOL_VIOLATION = "protocol_violation"
    """A message out of order, for another round, or asking for a second reveal."""


class SecAggAbortError(FedGrpcError):
    """A secure-aggregation round cannot continue; `reason` says why."""

    reason: AbortReason = AbortReason.PROTOCOL_VIOLATION

    def __init__(self, message: str) -> None:
        super().__init__(f"secure aggregation aborted ({self.reason}): {message}")


class TooFewClientsError(SecAggAbortError):
    """Fewer than t holders (or survivors) where t are needed."""

    reason = AbortReason.TOO_FEW_CLIENTS


class PeerSignatureError(SecAggAbortError):
    """A peer's signed advertisement does not verify: a possible key swap."""

    reason = AbortReason.BAD_SIGNATURE


class PeerKeyError(SecAggAbortError):
    """A peer's X25519 public key is unusable."""

    reason = AbortReason.BAD_KEY


class TamperedShareError(SecAggAbortError):
    """An encrypted share was altered, misaddressed or replayed from elsewhere."""

    reason = AbortReason.TAMPERED_SHARE


class InconsistentSharesError(SecAggAbortError):
    """Shares disagree (duplicate ids, off the polynomial, wrong secret)."""

    reason = AbortReason.INCONSISTENT_SHARES


class ConsistencyCheckError(SecAggAbortError):
    """The coordinator showed different survivor lists, or too few signed one."""

    reason = AbortReason.INCONSISTENT_SURVIVORS


class ProtocolViolationError(SecAggAbortError):
    """A message that the protocol forbids at this point."""

    reason = AbortReason.PROTOCOL_VIOLATION
