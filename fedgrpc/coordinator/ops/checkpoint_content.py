"""What a checkpoint holds, and putting it back: state that must outlive a process.

Captured (on the event loop, cheap: references, not copies) and restored:

* the run id, so a restarted coordinator is the same run to its clients;
* the model: spec, float32 master weights (a parameter shard's: its own
  range only, with the range's bounds as `master_range`), version and the
  round that made it, the outer optimizer's name, hyper-parameters and
  state (momentum, a shard's over its range), the divergence guard's
  recent norms (with the rounds that applied them, so they keep aging) and
  the reference claim of `weighting = capped`;
* the round counter (the next round reopens with a fresh nonce);
* the clients: id, name, public key and credit (updates accepted, samples
  contributed, last round, last loss; counters are clamped to 2^63 - 1 on
  restore, so a checkpoint an older coordinator wrote with an overflowed total
  cannot break status), and the id counter. Session tokens are
  secrets and are *not* stored: after a restart a client joins again;
* the trust scores (`strategy.trust`): each client's score and standing, so a
  quarantine outlives a restart and is written back to its record;
* traffic totals and the recent-round history, for status and metrics;
* the privacy ledger (every release, so a restart reports the same ε and
  `max_epsilon` keeps counting) and central DP's clip norm S.

Plain Python, no gRPC or asyncio (like the round engine it restores).
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

import torch

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.ops.checkpoint_file import CheckpointFile
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.held_range import held_of_checkpoint, held_range
from fedgrpc.coordinator.rounds.model_digests import ModelDigests
from fedgrpc.coordinator.rounds.records import Outcome, RoundResult
from fedgrpc.coordinator.rounds.registry import (
    SESSION_TOKEN_BYTES,
    ClientRecord,
    ClientRegistry,
)
from fedgrpc.coordinator.rounds.weighting import COUNTER_MAX
from fedgrpc.crypto.keys import PublicKey
from fedgrpc.crypto.statements import HASH_NAMES
from fedgrpc.domain.model_spec import ModelSpec, spec_from_rows, spec_rows
from fedgrpc.domain.requests import HashName, RecordPrivacyClaim
from fedgrpc.errors import CheckpointError, InvalidUpdateError
from fedgrpc.log import get_logger
from fedgrpc.optim import StateDict
from fedgrpc.version import __version__

log = get_logger(__name__)
_OPTIMIZER_PREFIX = "optimizer."
_AGGREGATOR_PREFIX = "aggregator."
_CREDIT_FIELDS = (
    "updates_accepted",
    "samples_contributed",
    "last_round",
    "last_applied_round",
    "bytes_received",
    "bytes_sent",
)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one checkpoint file stores: JSON state plus float32 tensors."""

    round_id: int
    """The last closed round the snapshot includes (its file name)."""
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]


@dataclass(frozen=True, slots=True)
class Totals:
    """Counters the runtime owns: run identity and traffic."""

    run_id: str
    bytes_received: int
    bytes_sent: int


def capture(engine: RoundEngine, registry: ClientRegistry, totals: Totals) -> Snapshot:
    """The coordinator's durable state now; the model must be seeded.

    Tensors are the live buffers: nothing may step the model until the
    snapshot is written (the runtime holds its numeric lock meanwhile).
    """
    model = engine.model
    spec, master = model.require_spec(), model.require_master()
    held = model.require_held()
    published = model.published
    assert published is not None  # seeded: `require_master` passed
    last_closed = engine.last_closed_round
    scalars, tensors = _split_optimizer_state(model.optimizer.state_dict())
    rule_scalars, rule_tensors = _split_optimizer_state(
        aggregator_state(engine), _AGGREGATOR_PREFIX
    )
    state = {
        "fedgrpc_version": __version__,
        "created_unix_s": time.time(),
        "run_id": totals.run_id,
        "round_id": last_closed,
        "model_version": model.version,
        "model_round_id": published.round_id,
        "spec": spec_rows(spec),
        "spec_aliases": [list(pair) for pair in spec.aliases],
        "spec_sha256": spec.digest.hex(),
        "master_range": [held.coord_start, held.coord_stop],
        "frozen_sha256": model.frozen_sha256.hex(),
        "optimizer": {
            "name": model.optimizer.name,
            "lr": engine.config.resolved_outer_lr,
            "momentum": engine.config.resolved_outer_momentum,
            "scalars": scalars,
        },
        "guard_history": [[r, n] for r, n in model.guard.history],
        "sample_weight_reference": engine.weighting.reference,
        "aggregator": {
            "name": engine.stages.aggregator.name,
            "scalars": rule_scalars,
        },
        # Only clients with standing: idle throwaway keys must not survive a
        # restart; the next id does, so no id is reissued (`registry`).
        "clients": [_client_row(c) for c in registry.durable()],
        "next_client_id": registry.next_id,
        "bytes_received": totals.bytes_received,
        "bytes_sent": totals.bytes_sent,
        "history": [_round_row(r) for r in engine.history],
        "trust": engine.trust.state_dict() if engine.trust is not None else None,
        "privacy": engine.privacy.state_dict(),
        # What an update from an older base signs (buffered_async, spanning
        # updates under selection): a restart must not refuse them all. Each
        # version's digests by hash ("sha256", "blake3"); older checkpoints
        # kept "base_shas", SHA-256 only, which still load.
        "base_digests": {
            str(v): {name: d.hex() for name, d in digests.known().items()}
            for v, digests in engine.participation.base_digests.items()
        },
    }
    return Snapshot(last_closed, state, {"master": master, **tensors, **rule_tensors})


def restore(
    checkpoint: CheckpointFile, engine: RoundEngine, registry: ClientRegistry
) -> Totals:
    """Put a checkpoint back into a fresh engine and registry; open the next round.

    Raises:
        CheckpointError: it was written for another outer optimizer, or its
            tensors do not fit its model spec.
    """
    state = checkpoint.state
    spec = _spec(state, checkpoint)
    master = held_of_checkpoint(
        checkpoint.tensors["master"],
        state.get("master_range"),  # older checkpoints: the whole model
        held_range(engine.config, spec),
        str(checkpoint.path),
    )
    _restore_optimizer(checkpoint, engine)
    _restore_aggregator(checkpoint, engine)
    engine.model.resume(
        spec, master, state["model_version"], state["model_round_id"],
        _guard_history(state),
    )  # fmt: skip
    engine.model.frozen_sha256 = bytes.fromhex(str(state.get("frozen_sha256", "")))
    engine.weighting.reference = state.get("sample_weight_reference")
    _restore_clients(registry, state["clients"], state.get("next_client_id", 0))
    if engine.trust is not None and state.get("trust") is not None:
        engine.trust.load_state_dict(state["trust"], registry)
    engine.privacy.load_state_dict(state.get("privacy"))  # before the history
    bases = _base_digests(state)
    engine.participation.base_digests.update(bases)
    current = bases.get(engine.model.version)
    if current is not None:  # the same bytes: no client need wait for a hash
        engine.model.require_published().digests.adopt(current.known())
    _restore_rounds(engine, checkpoint.round_id, state["history"])
    return Totals(state["run_id"], state["bytes_received"], state["bytes_sent"])


def _base_digests(state: dict[str, Any]) -> dict[int, ModelDigests]:
    """Recent versions' digests; a checkpoint older than BLAKE3 kept SHA-256's."""
    if "base_digests" in state:
        return {
            int(v): ModelDigests(
                {_hash_name(n): bytes.fromhex(d) for n, d in row.items()}
            )
            for v, row in state["base_digests"].items()
        }
    old = state.get("base_shas", {})
    return {int(v): ModelDigests({"sha256": bytes.fromhex(d)}) for v, d in old.items()}


def _hash_name(name: str) -> HashName:
    if name not in HASH_NAMES:
        raise CheckpointError(f"the checkpoint names an unknown hash {name!r}")
    return name


def _guard_history(state: dict[str, Any]) -> list[tuple[int, float]]:
    """The guard's (round, norm) pairs.

    Older checkpoints kept bare norms: they age from the round that made
    the checkpointed model.
    """
    if "guard_history" in state:
        return [(int(r), float(n)) for r, n in state["guard_history"]]
    made_by = int(state["model_round_id"])
    return [(made_by, float(n)) for n in state.get("update_norms", [])]


def aggregator_state(engine: RoundEngine) -> StateDict:
    """A stateful aggregator's `state_dict()` (centered clipping), else {}."""
    method = getattr(engine.stages.aggregator, "state_dict", None)
    return dict(method()) if callable(method) else {}


def _restore_aggregator(checkpoint: CheckpointFile, engine: RoundEngine) -> None:
    """Give a stateful aggregator its state back; a changed rule starts afresh."""
    saved = checkpoint.state.get("aggregator")  # absent in older checkpoints
    method = getattr(engine.stages.aggregator, "load_state_dict", None)
    if saved is None or not callable(method):
        return
    if saved["name"] != engine.stages.aggregator.name:
        log.warning(
            "checkpoint_aggregator_changed", checkpoint_aggregator=saved["name"],
            aggregator=engine.stages.aggregator.name, state="not restored",
        )  # fmt: skip
        return
    state: StateDict = dict(saved["scalars"])
    for key, tensor in checkpoint.tensors.items():
        if key.startswith(_AGGREGATOR_PREFIX):
            state[key.removeprefix(_AGGREGATOR_PREFIX)] = tensor
    method(state)


def _split_optimizer_state(
    state: StateDict, prefix: str = _OPTIMIZER_PREFIX
) -> tuple[dict[str, float | int], dict[str, torch.Tensor]]:
    scalars: dict[str, float | int] = {}
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[prefix + key] = value.detach()
        else:
            scalars[key] = value
    return scalars, tensors


def _restore_optimizer(checkpoint: CheckpointFile, engine: RoundEngine) -> None:
    saved = checkpoint.state["optimizer"]
    optimizer, config = engine.model.optimizer, engine.config
    if saved["name"] != optimizer.name:
        raise CheckpointError(
            f"{checkpoint.path} was written by outer optimizer {saved['name']!r} but "
            f"the config says {optimizer.name!r}; set outer_optimizer = "
            f"{saved['name']!r} to resume, or use a new checkpoint_dir"
        )
    _warn_if_changed(config, saved)
    state: StateDict = dict(saved["scalars"])
    for key, tensor in checkpoint.tensors.items():
        if key.startswith(_OPTIMIZER_PREFIX):
            state[key.removeprefix(_OPTIMIZER_PREFIX)] = tensor
    optimizer.load_state_dict(state)


def _warn_if_changed(config: CoordinatorConfig, saved: dict[str, Any]) -> None:
    """A resumed run may change lr or momentum on purpose; say so in the log."""
    now = (config.resolved_outer_lr, config.resolved_outer_momentum)
    if now != (saved["lr"], saved["momentum"]):
        log.warning(
            "checkpoint_hyperparameters_changed",
            checkpoint_lr=saved["lr"], checkpoint_momentum=saved["momentum"],
            lr=now[0], momentum=now[1],
        )  # fmt: skip


def _spec(state: dict[str, Any], checkpoint: CheckpointFile) -> ModelSpec:
    try:
        spec = spec_from_rows(state["spec"], state.get("spec_aliases"))
    except (KeyError, TypeError, ValueError, InvalidUpdateError) as exc:
        raise CheckpointError(f"{checkpoint.path}: bad model spec ({exc})") from exc
    if spec.digest.hex() != state["spec_sha256"]:
        raise CheckpointError(
            f"{checkpoint.path}: the model spec does not match its digest"
        )
    return spec


def _client_row(client: ClientRecord) -> dict[str, Any]:
    key = client.public_key
    return {
        "client_id": client.client_id,
        "name": client.name,
        "key": None if key is None else [key.algorithm, key.raw.hex()],
        **{name: getattr(client, name) for name in _CREDIT_FIELDS},
        "last_train_loss": client.last_train_loss,
        # An exclusion outlives a restart: restarting must not readmit a
        # client that keeps breaking its uploads (or is quarantined).
        "excluded_until_round": client.excluded_until_round,
        "exclusion_reason": client.exclusion_reason,
        # A restart must not lower the bar a client's next ε claim must clear.
        "record_dp": _claim_row(client.record_dp),
        # Nor let an applied update's progress count twice (buffered_async).
        "last_applied_base": client.last_applied_base,
    }


def _claim_row(claim: RecordPrivacyClaim | None) -> list[float] | None:
    """A record-level DP claim as [ε, δ, steps] (None: the client made none)."""
    return None if claim is None else [claim.epsilon, claim.delta, claim.steps]


def _restore_clients(
    registry: ClientRegistry, rows: list[dict[str, Any]], next_id: int
) -> None:
    """Re-create client records, disconnected, with fresh (unknown) session tokens."""
    records = []
    for row in rows:
        key = row["key"]
        public_key = None if key is None else PublicKey(key[0], bytes.fromhex(key[1]))
        record = ClientRecord(
            client_id=row["client_id"],
            name=row["name"],
            session_token=secrets.token_bytes(SESSION_TOKEN_BYTES),
            public_key=public_key,
            last_train_loss=_finite(row["last_train_loss"]),
            excluded_until_round=int(row.get("excluded_until_round", 0)),
            exclusion_reason=str(row.get("exclusion_reason", "")),
            # older checkpoints: fewer fields, and totals past 2^64 (issue 13)
            **{name: min(COUNTER_MAX, row.get(name, 0)) for name in _CREDIT_FIELDS},
        )
        if (applied_base := row.get("last_applied_base")) is not None:
            record.last_applied_base = int(applied_base)
        if (dp := row.get("record_dp")) is not None:
            record.record_dp = RecordPrivacyClaim(
                float(dp[0]), float(dp[1]), int(dp[2])
            )
        records.append(record)
    registry.restore(records, next_id)


def _finite(value: float) -> float:
    """A checkpointed loss, 0 if an older coordinator stored NaN or Inf."""
    return value if math.isfinite(value) else 0.0


def _round_row(result: RoundResult) -> dict[str, Any]:
    row = dataclasses.asdict(result)
    row["outcome"] = result.outcome.value
    return row


def _restore_rounds(engine: RoundEngine, last_closed: int, history: list[Any]) -> None:
    """Reload the history and reopen round `last_closed + 1` with a fresh nonce."""
    known = {f.name for f in dataclasses.fields(RoundResult)}
    results = []
    for row in history:
        fields = {k: v for k, v in row.items() if k in known}
        fields["outcome"] = Outcome(fields["outcome"])
        fields["selected"] = tuple(fields.get("selected", ()))  # a list on disk
        results.append(RoundResult(**fields))
    engine.resume(last_closed, results)
