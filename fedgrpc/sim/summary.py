"""What a finished simulation reports: the figures behind the table and `--json`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class RoundFigures:
    """One closed round as the coordinator recorded it."""

    round_id: int
    applied: bool
    train_loss: float
    seconds: float
    num_updates: int = 0
    """Updates the round averaged (attackers' included)."""
    epsilon: float = 0.0
    """The run's ε after the round (client-level DP; 0 with privacy off)."""


@dataclass(frozen=True, slots=True)
class PrivacyFigures:
    """Client-level DP of the run (present when `--privacy` was on)."""

    mode: str
    epsilon: float
    """ε spent at `delta` by the end (dp-accounting)."""
    delta: float
    max_epsilon: float
    """The budget (0: none)."""
    clip_norm: float
    """S at the end (moves under adaptive clipping)."""
    noise_multiplier: float
    """z (calibrated when `--dp-target-epsilon` was given)."""
    exhausted: bool
    """The run stopped on its budget before `rounds`."""


@dataclass(frozen=True, slots=True)
class Pace:
    """One client's speed, crashes and compute, summed over its processes.

    Compute is inner steps' wall time with the slowdown sleep, without sync
    points (`fedgrpc.sim.pace`); useful is the part in applied updates.
    """

    speed: float = 1.0
    """Its `--speeds` slowdown factor."""
    crashes: int = 0
    """Simulated crashes (`--crash-rate`), each followed by a restart."""
    compute_s: float = 0.0
    useful_s: float = 0.0
    samples: int = 0
    """Training samples it processed (batches x batch size), wasted ones included."""
    tokens: int = 0
    """Predicted targets it processed (char-LM: bytes; digits: = samples)."""

    @property
    def goodput(self) -> float:
        """Useful / compute: the share of its compute in applied updates."""
        return self.useful_s / self.compute_s if self.compute_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Participant:
    """One simulated client: who it was, what it did, what counted."""

    index: int
    client_id: str
    """Id the coordinator assigned at Join ("" if the client never joined)."""
    attack: str | None
    """Its `--attack` spec (e.g. "signflip:0.5"), None for an honest client."""
    updates_applied: int
    """Sync points whose round applied this client's update: the coordinator
    verified its signed chunks, accepted it and averaged it in (the client's
    own count of `applied` outcomes)."""
    pace: Pace = field(default_factory=Pace)


@dataclass(frozen=True, slots=True)
class AttackFigures:
    """The attack side of a run (present when `--attack` was given)."""

    specs: tuple[str, ...]
    """Every `--attack` value, as parsed (defaults not filled in)."""
    alie_z: float | None
    """Z the ALIE attackers used (z_max from n and f unless given)."""
    backdoor_success: float | None
    """Fraction of trigger prompts the final global model completes with the
    backdoor's target byte (`fedgrpc.sim.poison`); None without a backdoor."""
    quarantine: dict[str, Any] | None = None
    """With `--trust on`: each participant's final trust score and standing,
    the round it was first hard-quarantined, and the precision and recall of
    "quarantined within 5 rounds" against the true attackers
    (`fedgrpc.sim.quarantine`); None with trust off."""


@dataclass(frozen=True, slots=True)
class SimulationSummary:
    """What `fedgrpc simulate` prints at the end."""

    clients: int
    num_parameters: int
    rounds: list[RoundFigures]
    initial_val_loss: float
    final_val_loss: float
    bytes_up: int
    bytes_down: int
    wall_s: float
    participants: list[Participant] = field(default_factory=list)
    attack: AttackFigures | None = None
    privacy: PrivacyFigures | None = None
    task: str = "charlm"
    partition: str = "iid"
    """The `--partition` spec the clients' data was split by."""
    client_sizes: list[int] = field(default_factory=list)
    """Training samples per client (char-LM: 4 KiB pieces) under `partition`,
    as each client process computed its split."""
    train_wall_s: float = 0.0
    """Wall time from the start gate (every client joined) to the last
    client's end: what each client's busy fraction is a share of."""
    evaluations: list[dict[str, float]] = field(default_factory=list)
    """The global model scored on the validation split by client 0 (its
    `DiLoCoClient` `evaluate` callback): the initial weights (version 0),
    then each new global version it loaded, each with `model_version`,
    `val_loss`, (digits) `val_accuracy`, `elapsed_s` (seconds since the
    start gate when it loaded the version) and `tokens` (all clients'
    tokens marked by then, wasted ones included: `fedgrpc.sim.timeline`)."""

    @property
    def initial_val_accuracy(self) -> float | None:
        """Accuracy before training (None for a task without accuracy)."""
        return self._accuracy(0)

    @property
    def final_val_accuracy(self) -> float | None:
        """Accuracy of the final global model (None for a task without accuracy)."""
        return self._accuracy(-1)

    def _accuracy(self, position: int) -> float | None:
        if not self.evaluations or "val_accuracy" not in self.evaluations[position]:
            return None
        return self.evaluations[position]["val_accuracy"]

    def per_round(self, metric: str) -> list[float]:
        """`metric` of each global version after the initial one, in order."""
        return [e[metric] for e in self.evaluations[1:] if metric in e]

    @property
    def rounds_applied(self) -> int:
        """Rounds whose outer step was applied."""
        return sum(r.applied for r in self.rounds)

    @property
    def goodput(self) -> float:
        """Σ useful compute / Σ compute over all clients (0 without compute).

        Waiting is not compute: a fast client idle in a `sync` round lowers
        its busy fraction (`busy_fraction`), not goodput.
        """
        compute = sum(p.pace.compute_s for p in self.participants)
        useful = sum(p.pace.useful_s for p in self.participants)
        return useful / compute if compute > 0 else 0.0

    def busy_fraction(self, participant: Participant) -> float:
        """Its compute time / the training wall time (1: never waited)."""
        if self.train_wall_s <= 0:
            return 0.0
        return participant.pace.compute_s / self.train_wall_s

    @property
    def attackers(self) -> list[Participant]:
        """The participants that attacked, by index."""
        return [p for p in self.participants if p.attack is not None]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        figures: dict[str, Any] = {
            "clients": self.clients,
            "num_parameters": self.num_parameters,
            "rounds": len(self.rounds),
            "rounds_applied": self.rounds_applied,
            "first_train_loss": self.rounds[0].train_loss if self.rounds else None,
            "final_train_loss": self.rounds[-1].train_loss if self.rounds else None,
            "task": self.task,
            "partition": self.partition,
            "client_sizes": self.client_sizes,
            "initial_val_loss": self.initial_val_loss,
            "final_val_loss": self.final_val_loss,
            "val_loss_per_round": self.per_round("val_loss"),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "wall_s": round(self.wall_s, 2),
            "updates_per_round": [r.num_updates for r in self.rounds],
            "epsilon_per_round": [r.epsilon for r in self.rounds],
            "participants": [
                {
                    "index": p.index,
                    "client_id": p.client_id,
                    "attack": p.attack,
                    "updates_applied": p.updates_applied,
                    "speed": p.pace.speed,
                    "crashes": p.pace.crashes,
                    "compute_s": round(p.pace.compute_s, 3),
                    "useful_s": round(p.pace.useful_s, 3),
                    "goodput": p.pace.goodput,
                    "busy_fraction": self.busy_fraction(p),
                    "samples": p.pace.samples,
                    "tokens": p.pace.tokens,
                }
                for p in self.participants
            ],
            "goodput": self.goodput,
            "train_wall_s": round(self.train_wall_s, 2),
            "crashes": sum(p.pace.crashes for p in self.participants),
            "samples": sum(p.pace.samples for p in self.participants),
            "tokens": sum(p.pace.tokens for p in self.participants),
        }
        if self.final_val_accuracy is not None:
            figures["initial_val_accuracy"] = self.initial_val_accuracy
            figures["final_val_accuracy"] = self.final_val_accuracy
            figures["val_accuracy_per_round"] = self.per_round("val_accuracy")
        figures["evaluations"] = self.evaluations
        if self.attack is not None:
            figures["attack"] = {
                "specs": list(self.attack.specs),
                "attackers": [p.index for p in self.attackers],
                "alie_z": self.attack.alie_z,
                "backdoor_success": self.attack.backdoor_success,
                "quarantine": self.attack.quarantine,
            }
        if self.privacy is not None:
            figures["privacy"] = asdict(self.privacy)
        return figures
