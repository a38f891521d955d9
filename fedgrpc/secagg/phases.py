"""Phase order for the round state machines: one step at a time, abort is final.

Both `ClientRound` and `ServerRound` move through fixed phases. A step runs
only in its phase; on success the machine moves to the next phase, and a
`SecAggAbortError` from the step moves it to the aborted phase for good (a
client that refused once reveals nothing more; a coordinator that found the
round unrecoverable applies nothing). Any other error (a malformed message)
leaves the phase unchanged, so the caller may go on without that message.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Generic, TypeVar

from fedgrpc.secagg.errors import SecAggAbortError


class ClientPhase(Enum):
    """Where a `ClientRound` is; each method needs one phase and moves to the next."""

    NEW = "new"
    ADVERTISED = "advertised"
    SHARED = "shared"
    RECEIVED = "received"
    MASKED = "masked"
    SIGNED = "signed"
    DONE = "done"
    ABORTED = "aborted"


class ServerPhase(Enum):
    """Which client messages a `ServerRound` accepts now."""

    ADVERTISE = "advertise"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


P = TypeVar("P", bound=Enum)
T = TypeVar("T")


class PhaseMachine(Generic[P]):
    """The current phase and the rule for leaving it. Not thread-safe."""

    def __init__(
        self, initial: P, aborted: P, out_of_order: Callable[[str], Exception]
    ) -> None:
        """Start in `initial`; `out_of_order(message)` builds the wrong-phase error."""
        self.phase = initial
        self._aborted = aborted
        self._out_of_order = out_of_order

    def expect(self, phase: P, what: str) -> None:
        """Raise the wrong-phase error unless the machine is in `phase`."""
        if self.phase is not phase:
            raise self._out_of_order(
                f"{what} belongs to phase {phase.value}, but the round is in "
                f"phase {self.phase.value}"
            )

    def run(
        self, phase: P, after: P, step: Callable[[], T], what: str = "this message"
    ) -> T:
        """Run `step` in `phase`; move to `after`, or to aborted on an abort."""
        self.expect(phase, what)
        try:
            result = step()
        except SecAggAbortError:
            self.phase = self._aborted
            raise
        self.phase = after
        return result

    def abort(self) -> None:
        """Enter the aborted phase (a refusal detected outside a step)."""
        self.phase = self._aborted
