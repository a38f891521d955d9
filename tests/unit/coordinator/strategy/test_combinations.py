"""Stage choices that cannot work together are refused at start, naming both."""

from __future__ import annotations

from typing import Any

import pytest

from fedgrpc.aggregate import CoordinateMedian, TrimmedMean, WeightedMean
from fedgrpc.coordinator.strategy import StrategyChoice, check_strategy
from fedgrpc.errors import ConfigError


def test_auto_picks_the_accumulator_the_aggregator_and_mode_need() -> None:
    assert check_strategy(StrategyChoice(aggregator=WeightedMean())) == "streaming_sum"
    assert check_strategy(StrategyChoice(aggregator=CoordinateMedian())) == "spool"
    secure = StrategyChoice(aggregator=WeightedMean(), secure_aggregation=True)
    assert check_strategy(secure) == "secure_ring"


def test_an_explicit_spool_also_serves_the_mean() -> None:
    choice = StrategyChoice(aggregator=WeightedMean(), accumulator="spool")

    assert check_strategy(choice) == "spool"


@pytest.mark.parametrize(
    ("choice", "first", "second", "fix"),
    [
        (
            StrategyChoice(aggregator=CoordinateMedian(), secure_aggregation=True),
            "aggregator = 'median' needs every client's update",
            "secure_aggregation = true lets the coordinator see only their sum",
            "turn one of them off",
        ),
        (
            StrategyChoice(
                aggregator=WeightedMean(), accumulator="spool", secure_aggregation=True
            ),
            "accumulator = 'spool'",
            "secure_aggregation = true",
            "turn one of them off",
        ),
        (
            StrategyChoice(aggregator=TrimmedMean(), accumulator="streaming_sum"),
            "aggregator = 'trimmed_mean' needs every client's update",
            "accumulator = 'streaming_sum' keeps only their running sum",
            "set accumulator = 'spool'",
        ),
        (
            StrategyChoice(aggregator=WeightedMean(), clients_per_round=3),
            "clients_per_round = 3",
            "selection = 'all'",
            "remove clients_per_round",
        ),
        (
            StrategyChoice(aggregator=WeightedMean(), selection="random"),
            "selection = 'random'",
            "clients_per_round is not set",
            "set it",
        ),
        (
            StrategyChoice(
                aggregator=WeightedMean(),
                selection="loss",
                clients_per_round=2,
                min_clients=3,
            ),
            "clients_per_round = 2",
            "min_clients = 3",
            "raise clients_per_round or lower min_clients",
        ),
    ],
)
def test_impossible_pairs_are_refused_naming_both_settings_and_a_fix(
    choice: StrategyChoice, first: str, second: str, fix: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        check_strategy(choice)

    message = str(caught.value)
    assert first in message
    assert second in message
    assert fix in message


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="accumulator='ram'"):
        check_strategy(StrategyChoice(aggregator=WeightedMean(), accumulator="ram"))  # type: ignore[arg-type]
    best: Any = "best"  # what an unchecked TOML value could hold
    with pytest.raises(ConfigError, match="selection='best'"):
        check_strategy(
            StrategyChoice(
                aggregator=WeightedMean(), selection=best, clients_per_round=1
            )
        )


def test_a_valid_selection_with_secure_aggregation_passes() -> None:
    choice = StrategyChoice(
        aggregator=WeightedMean(),
        secure_aggregation=True,
        selection="random",
        clients_per_round=4,
        min_clients=3,
    )

    assert check_strategy(choice) == "secure_ring"
