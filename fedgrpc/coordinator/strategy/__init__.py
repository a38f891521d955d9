"""The pluggable stages of a round, with their built-ins (DESIGN.md, round pipeline).

- Selector (`selection`, `power_of_choice`, `throughput`): who takes part.
- Accumulator and Aggregator: Protocols and built-ins in `fedgrpc.aggregate`
  (a leaf package, so tools and tests use them without the coordinator).
- OuterOptimizer: `fedgrpc.optim`.
- `plugins`: a user's Aggregator or OuterOptimizer from `module:Class`.
- `combinations`: the choices that cannot work together, refused at start.
- `pipeline`: `RoundStages`, all of the above built once from plain settings;
  what the round engine holds.

Plain Python: no gRPC, no asyncio, no protobuf. The round engine calls a
Selector when a round opens and builds the stages once at start.
"""

from fedgrpc.coordinator.strategy.combinations import (
    AccumulatorKind,
    AccumulatorName,
    StrategyChoice,
    check_strategy,
)
from fedgrpc.coordinator.strategy.pipeline import RoundStages, StrategySettings
from fedgrpc.coordinator.strategy.plugins import (
    BUILTIN_AGGREGATORS,
    load_aggregator,
    load_outer_optimizer,
)
from fedgrpc.coordinator.strategy.power_of_choice import LossSelector
from fedgrpc.coordinator.strategy.selection import (
    SELECTIONS,
    AllSelector,
    Candidate,
    RandomSelector,
    SelectionName,
    Selector,
    nonce_uniforms,
)
from fedgrpc.coordinator.strategy.selectors import build_selector
from fedgrpc.coordinator.strategy.throughput import ThroughputSelector

__all__ = [
    "BUILTIN_AGGREGATORS",
    "SELECTIONS",
    "AccumulatorKind",
    "AccumulatorName",
    "AllSelector",
    "Candidate",
    "LossSelector",
    "RandomSelector",
    "RoundStages",
    "SelectionName",
    "Selector",
    "StrategyChoice",
    "StrategySettings",
    "ThroughputSelector",
    "build_selector",
    "check_strategy",
    "load_aggregator",
    "load_outer_optimizer",
    "nonce_uniforms",
]
