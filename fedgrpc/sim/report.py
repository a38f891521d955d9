"""The table `fedgrpc simulate` ends with."""

from __future__ import annotations

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
    if attack.alie_z is not None:
        rows.append(("ALIE z", f"{attack.alie_z:.4f}"))
    if attack.backdoor_success is not None:
        rows.append(("backdoor success", f"{attack.backdoor_success:.1%}"))
    return rows


def format_summary(summary: SimulationSummary) -> str:
    """A two-column table a person reads at a glance."""
    first = summary.rounds[0].train_loss if summary.rounds else float("nan")
    last = summary.rounds[-1].train_loss if summary.rounds else float("nan")
    rows = [
        ("clients", str(summary.clients)),
        ("parameters", f"{summary.num_parameters:,}"),
        ("rounds (applied)", f"{len(summary.rounds)} ({summary.rounds_applied})"),
        ("train loss (round 1 -> last)", f"{first:.4f} -> {last:.4f}"),
        (
            "validation loss (start -> end)",
            f"{summary.initial_val_loss:.4f} -> {summary.final_val_loss:.4f}",
        ),
        ("bytes up (updates)", _bytes(summary.bytes_up)),
        ("bytes down (weights)", _bytes(summary.bytes_down)),
        ("wall time", f"{summary.wall_s:.1f} s"),
        *_attack_rows(summary),
    ]
    width = max(len(k) for k, _ in rows)
    rule = "-" * (width + 3 + max(len(v) for _, v in rows))
    lines = [rule, *(f"{k.ljust(width)}   {v}" for k, v in rows), rule]
    return "\n".join(lines)
