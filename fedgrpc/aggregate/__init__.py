"""Aggregation: fold the round's client updates into one pseudo-gradient.

Between `wire` (decoded updates) and `optim` (the outer step) on the
coordinator. Two stages (`stages`): an Accumulator holds updates as they
arrive (`StreamingSum`, the default; `SpoolAccumulator`, one file per
client, for rules that need every update), and an Aggregator turns them into
one (`WeightedMean`; over a spool: `CoordinateMedian`, `TrimmedMean`,
`MultiKrum` / `krum`, `GeometricMedian`, `CenteredClipping`, and the
`NormBounded` pre-step with its `hybrid` pipeline). `distances_to` measures
each spooled update's distance to an aggregate (for trust scores).
A leaf package: it imports only `errors` and `log`, never gRPC.
"""

from fedgrpc.aggregate.iterative import CenteredClipping, GeometricMedian
from fedgrpc.aggregate.krum import MultiKrum, krum
from fedgrpc.aggregate.mean import StreamingSum
from fedgrpc.aggregate.norm_bound import NormBounded, hybrid
from fedgrpc.aggregate.passes import distances_to
from fedgrpc.aggregate.robust import CoordinateMedian, TrimmedMean
from fedgrpc.aggregate.spool import SpoolAccumulator
from fedgrpc.aggregate.spool_dir import SpoolDirectory, default_spool_root
from fedgrpc.aggregate.spool_view import SpooledUpdates
from fedgrpc.aggregate.stages import (
    Accumulator,
    AddableBlock,
    Aggregator,
    HeldSpool,
    HeldSum,
    HeldUpdates,
    Holding,
    UpdateKey,
    holding_satisfies,
)
from fedgrpc.aggregate.weighted import WeightedMean

__all__ = [
    "Accumulator",
    "AddableBlock",
    "Aggregator",
    "CenteredClipping",
    "CoordinateMedian",
    "GeometricMedian",
    "HeldSpool",
    "HeldSum",
    "HeldUpdates",
    "Holding",
    "MultiKrum",
    "NormBounded",
    "SpoolAccumulator",
    "SpoolDirectory",
    "SpooledUpdates",
    "StreamingSum",
    "TrimmedMean",
    "UpdateKey",
    "WeightedMean",
    "default_spool_root",
    "distances_to",
    "holding_satisfies",
    "hybrid",
    "krum",
]
