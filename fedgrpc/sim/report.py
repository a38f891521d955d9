"""The table `fedgrpc simulate` ends with."""

from __future__ import annotations

from typing import Any

from fedgrpc.sim.summary import SimulationSummary


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


def _attack_rows(summary: SimulationSummary) -> list[tuple[str, str]]:
    """Who attacked and how; only when the run had `--attack`."""
    attack = summary.attack
    if attack is None:
        return []
    rows = [("attacks", ", ".join(attack.specs))]
    rows += [
        (f"  attacker {p.index}", f"{p.attack}, {p.updates_applied} updates applied")
        for p in summary.attackers
    ]
    rows += _quarantine_rows(attack.quarantine)
    if attack.alie_z is not None:
        rows.append(("ALIE z", f"{attack.alie_z:.4f}"))
    if attack.backdoor_success is not None:
        rows.append(("backdoor success", f"{attack.backdoor_success:.1%}"))
    return rows


def _privacy_rows(summary: SimulationSummary) -> list[tuple[str, str]]:
    """ε spent (of the budget), δ, S and z; only when the run had `--privacy`."""
    p = summary.privacy
    if p is None:
        return []
    budget = f" of max {p.max_epsilon:g}" if p.max_epsilon > 0 else ""
    stopped = " (stopped on its budget)" if p.exhausted else ""
    return [
        ("privacy", f"{p.mode}, clip S {p.clip_norm:.4g}, noise z "
                    f"{p.noise_multiplier:.4g}"),
        ("epsilon (delta)", f"{p.epsilon:.4g}{budget} ({p.delta:g}){stopped}"),
    ]  # fmt: skip


def _pace_rows(summary: SimulationSummary) -> list[tuple[str, str]]:
    """Goodput and the work done, then a row per client if any was slowed.

    The per-client rows (speed, goodput, busy fraction, crashes) appear only
    with `--speeds` or crashes, so a plain run's table stays short.
    """
    people = summary.participants
    compute = sum(p.pace.compute_s for p in people)
    rows = [
        ("goodput (compute in applied updates)",
         f"{summary.goodput:.1%} of {compute:.1f} s client compute"),
        ("samples (tokens) processed", f"{sum(p.pace.samples for p in people):,} "
         f"({sum(p.pace.tokens for p in people):,})"),
    ]  # fmt: skip
    if all(p.pace.speed == 1 and p.pace.crashes == 0 for p in people):
        return rows
    return rows + [
        (f"  client {p.index}",
         f"speed x{p.pace.speed:g}, goodput {p.pace.goodput:.1%}, busy "
         f"{summary.busy_fraction(p):.0%}, {p.pace.crashes} crash(es)")
        for p in people
    ]  # fmt: skip


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _quarantine_rows(figures: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Trust's catch: precision/recall, then the attackers and anyone caught."""
    if figures is None:
        return []
    within = figures["within_rounds"]
    rows = [
        (
            f"quarantined by round {within}",
            f"precision {_ratio(figures['precision'])}, "
            f"recall {_ratio(figures['recall'])}",
        )
    ]
    for row in figures["clients"]:
        first = row["first_quarantined_round"]
        if not row["attacker"] and first is None:
            continue  # honest and never quarantined: the table stays short
        who = "attacker" if row["attacker"] else "honest"
        when = f"quarantined in round {first}" if first else "never quarantined"
        rows.append(
            (
                f"  trust {row['index']}",
                f"{row['trust_score']:.3f} {row['trust_state']} ({who}), {when}",
            )
        )
    return rows


def _accuracy_rows(summary: SimulationSummary) -> list[tuple[str, str]]:
    """Validation accuracy of the global model; only for a task that has one."""
    start, end = summary.initial_val_accuracy, summary.final_val_accuracy
    if start is None or end is None:
        return []
    best = max(summary.per_round("val_accuracy"), default=end)
    return [("validation accuracy (start -> end)", f"{start:.1%} -> {end:.1%} "
             f"(best round {best:.1%})")]  # fmt: skip


def format_summary(summary: SimulationSummary) -> str:
    """A two-column table a person reads at a glance."""
    first = summary.rounds[0].train_loss if summary.rounds else float("nan")
    last = summary.rounds[-1].train_loss if summary.rounds else float("nan")
    rows = [
        ("task, partition", f"{summary.task}, {summary.partition}"),
        ("clients", str(summary.clients)),
        ("parameters", f"{summary.num_parameters:,}"),
        ("rounds (applied)", f"{len(summary.rounds)} ({summary.rounds_applied})"),
        ("train loss (round 1 -> last)", f"{first:.4f} -> {last:.4f}"),
        (
            "validation loss (start -> end)",
            f"{summary.initial_val_loss:.4f} -> {summary.final_val_loss:.4f}",
        ),
        *_accuracy_rows(summary),
        ("bytes up (updates)", _bytes(summary.bytes_up)),
        ("bytes down (weights)", _bytes(summary.bytes_down)),
        ("wall time", f"{summary.wall_s:.1f} s"),
        *_pace_rows(summary),
        *_privacy_rows(summary),
        *_attack_rows(summary),
    ]
    width = max(len(k) for k, _ in rows)
    rule = "-" * (width + 3 + max(len(v) for _, v in rows))
    lines = [rule, *(f"{k.ljust(width)}   {v}" for k, v in rows), rule]
    return "\n".join(lines)
