"""The log lines a closed round leaves: what operators grep and dashboards parse.

Apart from the runtime so their fields are defined in one place, next to
the metrics they mirror (`ops.metrics`).
"""

from __future__ import annotations

from fedgrpc.coordinator.rounds.records import RoundResult
from fedgrpc.log import get_logger

log = get_logger("fedgrpc.coordinator.runtime")
"""Under the runtime's logger name, as before the move: log filters keep working."""


def log_round_closed(result: RoundResult, applied: bool, max_rounds: int) -> None:
    """`round_closed` for every round; `run_finished` after the run's last."""
    # Both counts on every outcome: a skipped round's committed updates
    # were thrown away, and a bare "updates=2" read as if they counted.
    log.info(
        "round_closed",
        round=result.round_id,
        outcome=result.outcome.value,
        version=result.model_version,
        updates_applied=result.num_updates if applied else 0,
        updates_discarded=0 if applied else result.num_updates,
        reason=result.reason,
        seconds=round(result.duration_s, 3),
        bytes=result.bytes_received,
        train_loss=round(result.mean_train_loss, 4),
        **(
            {"eval_loss": round(result.mean_eval_loss, 4)}
            if result.eval_reports
            else {}
        ),
        **({"max_staleness": result.max_staleness} if result.max_staleness else {}),
        **_privacy_fields(result),
    )
    if result.run_finished:
        log.info(
            "run_finished",
            rounds=result.round_id,
            version=result.model_version,
            max_rounds=max_rounds,
            **({"cause": "privacy_budget"} if result.privacy_exhausted else {}),
        )


def _privacy_fields(result: RoundResult) -> dict[str, float | bool]:
    """ε after the round, δ, the budget, S and z (nothing with privacy off)."""
    if result.privacy_delta <= 0:
        return {}
    return {
        "epsilon": round(result.privacy_epsilon, 6),
        "delta": result.privacy_delta,
        "max_epsilon": result.max_epsilon,
        "clip_norm": round(result.dp_clip_norm, 6),
        "noise_multiplier": round(result.dp_noise_multiplier, 6),
        "privacy_exhausted": result.privacy_exhausted,
    }
