"""Refuse, at start, stage choices that cannot work together.

Each stage is valid on its own; some pairs are not. A rule that needs every
client's update cannot run where the coordinator only ever sees their sum
(secure aggregation, the streaming sum), and a selection of k clients
cannot feed a round that waits for more than k. These are found when the
coordinator starts, with a message naming *both* settings and how to fix
it, instead of a round that never closes or an aggregate that is silently
wrong.

`check_strategy` is the one entry point: pure, no I/O, so the CLI, the
in-process `Coordinator` and the tests all get the same refusals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedgrpc.aggregate import Aggregator, Holding, holding_satisfies
from fedgrpc.coordinator.strategy.selection import (
    SELECTIONS,
    SelectionName,
    check_clients_per_round,
)
from fedgrpc.errors import ConfigError

AccumulatorName = Literal["auto", "streaming_sum", "spool"]
"""The `accumulator` setting: `auto` picks from the aggregator and the mode."""
AccumulatorKind = Literal["streaming_sum", "spool", "secure_ring"]
"""What the round engine builds: secure aggregation always means the ring."""
ACCUMULATORS: tuple[AccumulatorName, ...] = ("auto", "streaming_sum", "spool")
CLIENT_BOUND_HINT = (
    " (ClientConfig(max_update_norm=...): each client clips its update's L2 "
    "norm before encoding and masking it)"
)
"""Where a refusal of robust rules under secure aggregation points the user."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategyChoice:
    """The stage settings of one coordinator, as the config gives them."""

    aggregator: Aggregator
    """Built already (`plugins.load_aggregator`): its `name` and `needs` count."""
    accumulator: AccumulatorName = "auto"
    secure_aggregation: bool = False
    selection: SelectionName = "all"
    clients_per_round: int | None = None
    """k; None with selection `all` (every client)."""
    min_clients: int = 1
    """Updates a round needs to be applied (the quorum's floor)."""
    norm_bound: bool = False
    """The norm-bound pre-step is on (`norm_bound` / `norm_bound_multiple`)."""


def check_strategy(choice: StrategyChoice) -> AccumulatorKind:
    """Refuse impossible combinations; return the accumulator the round should use.

    Raises:
        ConfigError: naming both conflicting settings and a fix.
    """
    check_selection(choice)
    return choose_accumulator(choice)


def choose_accumulator(choice: StrategyChoice) -> AccumulatorKind:
    """The accumulator to build; refuses one that cannot feed the aggregator.

    `auto` means the ring under secure aggregation, else the spool if the
    aggregator needs every update, else the streaming sum.

    Raises:
        ConfigError: see the module docstring.
    """
    rule, needs = choice.aggregator.name, choice.aggregator.needs
    if choice.accumulator not in ACCUMULATORS:
        raise ConfigError(
            f"accumulator={choice.accumulator!r} is invalid: expected one of "
            f"{', '.join(ACCUMULATORS)}"
        )
    if choice.secure_aggregation:
        if choice.norm_bound:
            raise ConfigError(
                "norm_bound / norm_bound_multiple clip each client's update on "
                "the coordinator, but secure_aggregation = true lets it see only "
                f"their sum; unset the bound and bound updates on the clients "
                f"instead{CLIENT_BOUND_HINT}"
            )
        if needs == "every_update":
            raise ConfigError(
                f"aggregator = {rule!r} needs every client's update, but "
                "secure_aggregation = true lets the coordinator see only their "
                "sum; turn one of them off, or keep secure aggregation with "
                f"aggregator = 'mean' and bound each update on the clients"
                f"{CLIENT_BOUND_HINT}"
            )
        if choice.accumulator == "spool":
            raise ConfigError(
                "accumulator = 'spool' keeps every client's update, but "
                "secure_aggregation = true lets the coordinator see only their "
                "sum; turn one of them off (or set accumulator = 'auto')"
            )
        return "secure_ring"
    if choice.accumulator == "auto":
        return "spool" if needs == "every_update" else "streaming_sum"
    kind: AccumulatorKind = choice.accumulator
    held: Holding = "sum" if kind == "streaming_sum" else "every_update"
    if not holding_satisfies(held, needs):
        raise ConfigError(
            f"aggregator = {rule!r} needs every client's update, but "
            "accumulator = 'streaming_sum' keeps only their running sum; set "
            "accumulator = 'spool' (or 'auto')"
        )
    return kind


def check_selection(choice: StrategyChoice) -> None:
    """Refuse a selection that contradicts k or could never reach quorum.

    Raises:
        ConfigError: see the module docstring.
    """
    selection, k = choice.selection, choice.clients_per_round
    if selection not in SELECTIONS:
        raise ConfigError(
            f"selection={selection!r} is invalid: expected one of "
            f"{', '.join(SELECTIONS)}"
        )
    if selection == "all":
        if k is not None:
            raise ConfigError(
                f"clients_per_round = {k} was set, but selection = 'all' takes "
                "every client; set selection = 'random', 'loss' or 'throughput' "
                "to choose k, or remove clients_per_round"
            )
        return
    if k is None:
        raise ConfigError(
            f"selection = {selection!r} chooses clients_per_round clients each "
            "round, but clients_per_round is not set; set it (>= 1)"
        )
    check_clients_per_round(k)
    if k < choice.min_clients:
        raise ConfigError(
            f"clients_per_round = {k} selects fewer clients than min_clients = "
            f"{choice.min_clients} needs to apply a round, so no round would "
            "ever be applied; raise clients_per_round or lower min_clients"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyChoice:
    """The settings central DP must agree with (`check_central_privacy`)."""

    accumulator: AccumulatorKind
    """What `check_strategy` chose for the aggregator."""
    accumulator_setting: str = "auto"
    norm_bound: bool = False
    """`norm_bound` or `norm_bound_multiple` is set."""
    aggregator: str
    weighting: str
    secure_aggregation: bool
    trust: str
    selection: SelectionName
    accountant: str


def check_central_privacy(choice: PrivacyChoice) -> None:
    """Refuse what breaks central DP's sensitivity S (privacy = 'central').

    Clipping happens where each whole update is known, as it commits into
    the summed round; the sum's sensitivity is then S. A rule that needs
    every update (median, Krum, the norm bound, trust's spool) has another
    sensitivity, which nobody has bounded here, and secure aggregation
    hides the updates the coordinator would clip.

    Raises:
        ConfigError: naming both settings and a fix.
    """
    if choice.secure_aggregation:
        raise ConfigError(
            "privacy = 'central' clips each client's update on the coordinator, "
            "but secure_aggregation = true lets it see only their sum; use "
            "privacy = 'distributed' with secure aggregation, or turn it off"
        )
    if choice.trust == "on":
        raise ConfigError(
            "privacy = 'central' bounds each client's share of the round's sum by "
            "dp_clip_norm, but trust = 'on' spools and re-weights every update; "
            "turn trust off with central privacy"
        )
    if choice.accumulator != "streaming_sum":
        culprit = f"aggregator = {choice.aggregator!r} needs every update"
        if choice.norm_bound:
            culprit = "norm_bound / norm_bound_multiple needs every update"
        elif choice.accumulator_setting == "spool":
            culprit = "accumulator = 'spool' keeps every update"
        raise ConfigError(
            f"privacy = 'central' noises the round's sum, whose sensitivity is "
            f"dp_clip_norm (each update is clipped into it), but {culprit}, "
            "and a robust rule's sensitivity is not dp_clip_norm; use "
            "aggregator = 'mean' with accumulator 'auto' and no norm_bound"
        )
    if choice.weighting != "equal":
        raise ConfigError(
            f"privacy = 'central' needs each clipped update to count once, but "
            f"weighting = {choice.weighting!r} scales it by the sample count the "
            "client claims (past dp_clip_norm); set weighting = 'equal'"
        )
    if choice.selection not in ("all", "random"):
        raise ConfigError(
            f"privacy = 'central' accounts a round as all clients (q = 1) or a "
            f"uniform sample (selection = 'random'), but selection = "
            f"{choice.selection!r} chooses by what clients report, which no "
            "accountant covers; use selection = 'all' or 'random'"
        )
    if choice.selection == "random" and choice.accountant == "pld":
        raise ConfigError(
            "selection = 'random' samples a fixed number of clients, which "
            "dp_accountant = 'pld' cannot account (dp-accounting has no PLD of "
            "sampling without replacement); use dp_accountant = 'rdp'"
        )
