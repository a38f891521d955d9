"""The coordinator's state as plain data: what `fedgrpc.Coordinator.status()` returns.

The admin RPC carries the same facts as protobuf (`AdminService.GetStatus`);
a Python program that runs the coordinator in-process gets these frozen
dataclasses instead, so it never touches a `_pb2` message and can compare,
print or pickle a snapshot freely.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClientSummary:
    """One client the coordinator knows (connected or not)."""

    client_id: str
    name: str
    connected: bool
    updates_accepted: int
    samples_contributed: int
    last_round: int
    last_train_loss: float
    excluded_until_round: int = 0
    """Its pushes for rounds before this are refused (0: not excluded)."""
    exclusion_reason: str = ""
    trust_score: float = 1.0
    """Its trust score in [0, 1] (1 when trust is off or it was never scored)."""
    trust_state: str = ""
    """trusted, soft, quarantined or probation ("" when trust is off)."""
    trust_weight_factor: float = 1.0
    """Multiplier of its aggregation weight from its trust score (1: full)."""
    first_quarantined_round: int = 0
    """Round whose score first put it in hard quarantine (0: never)."""
    record_dp_epsilon: float = 0.0
    """Record-level DP: ε its last counted update claimed (signed by it)."""
    record_dp_delta: float = 0.0
    """δ of that ε (0: it claims no record-level DP)."""
    record_dp_steps: int = 0
    """DP-SGD steps composed into that ε."""


@dataclass(frozen=True, slots=True)
class RoundSummary:
    """One closed round."""

    round_id: int
    applied: bool
    """True if the round's mean moved the weights; False if it was skipped."""
    num_updates: int
    duration_s: float
    mean_train_loss: float
    """Sample-weighted mean of the clients' reported losses (0.0 without updates)."""
    reason: str
    """Why the round closed (complete, deadline, ...) or was skipped."""
    privacy_epsilon: float = 0.0
    """The run's ε after this round (central DP; 0 without privacy)."""


@dataclass(frozen=True, slots=True)
class CoordinatorStatus:
    """A snapshot of one coordinator, taken on its event loop."""

    run_id: str
    phase: str
    """waiting_for_model, collecting, applying or stopping."""
    round_id: int
    """The open round (0 before the model is seeded)."""
    model_version: int
    """Applied rounds so far (0: the initial weights)."""
    num_parameters: int
    """Coordinates in the model, 0 until the weights are known."""
    clients: tuple[ClientSummary, ...]
    rounds: tuple[RoundSummary, ...]
    """Closed rounds, oldest first."""
    bytes_received: int
    bytes_sent: int
    uptime_s: float
    serving: bool = True
    """False while a failed checkpoint write holds the newest version back:
    it is not served and no round applies until a retry succeeds."""
    not_serving_reason: str = ""
    """Why not ("" while serving): the OS's reason and what happens meanwhile."""
    privacy: str = "off"
    """Client-level DP: off, central or distributed."""
    privacy_epsilon: float = 0.0
    """ε the run has spent at `privacy_delta` (0 without privacy)."""
    privacy_delta: float = 0.0
    max_epsilon: float = 0.0
    """The run's budget (0: none)."""
    dp_clip_norm: float = 0.0
    """S the next round clips each update to."""
    dp_noise_multiplier: float = 0.0
    privacy_exhausted: bool = False
    """The run finished on its budget: a round would have spent past it."""

    @property
    def rounds_closed(self) -> int:
        """How many rounds have closed (applied or skipped)."""
        return self.rounds[-1].round_id if self.rounds else 0

    @property
    def connected_clients(self) -> int:
        """Clients with an open session now."""
        return sum(1 for c in self.clients if c.connected)
