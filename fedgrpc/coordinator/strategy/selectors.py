"""Build the Selector a config names (the one place that knows every built-in)."""

from __future__ import annotations

from fedgrpc.coordinator.strategy.power_of_choice import (
    DEFAULT_MAX_SAMPLE_RATIO,
    LossSelector,
)
from fedgrpc.coordinator.strategy.selection import (
    SELECTIONS,
    AllSelector,
    RandomSelector,
    SelectionName,
    Selector,
)
from fedgrpc.coordinator.strategy.throughput import (
    DEFAULT_PATIENCE_ROUNDS,
    ThroughputSelector,
)
from fedgrpc.errors import ConfigError


def build_selector(
    selection: SelectionName,
    clients_per_round: int | None,
    *,
    candidate_set_size: int | None = None,
    max_sample_ratio: float = DEFAULT_MAX_SAMPLE_RATIO,
    patience_rounds: int = DEFAULT_PATIENCE_ROUNDS,
) -> Selector:
    """The Selector for `selection` choosing `clients_per_round` clients.

    `candidate_set_size` and `max_sample_ratio` tune `loss`;
    `patience_rounds` tunes `throughput`.

    Raises:
        ConfigError: unknown name, k missing for a k-selector, or a bad option.
    """
    if selection == "all":
        return AllSelector()
    if selection not in SELECTIONS:
        raise ConfigError(
            f"selection={selection!r} is invalid: expected one of "
            f"{', '.join(SELECTIONS)}"
        )
    if clients_per_round is None:
        raise ConfigError(f"selection = {selection!r} needs clients_per_round (>= 1)")
    if selection == "random":
        return RandomSelector(clients_per_round)
    if selection == "loss":
        return LossSelector(clients_per_round, candidate_set_size, max_sample_ratio)
    return ThroughputSelector(clients_per_round, patience_rounds)
