"""Splitting a labelled dataset across federated clients, IID or not.

Real federations are not IID: each hospital, phone or silo sees its own
mix of labels and its own amount of data. `fedgrpc.data` makes that mix
reproducible so methods can be compared on it:

* `spec`: the `iid | dirichlet:ALPHA | quantity:ALPHA` grammar of
  `fedgrpc simulate --partition`;
* `partition`: the partitioners (IID, Dirichlet label skew, Dirichlet
  quantity skew) and the `Partition` they return, with per-client label
  counts;
* `view`: the split as a text table and as an SVG heatmap.

A leaf package: numpy only (plus the base modules), no torch, no gRPC.
It sits before the model on the data path: labels -> `Partition` ->
each client's sample indices -> that client's batches.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from fedgrpc.data.spec import PartitionSpec, parse_partition

if TYPE_CHECKING:
    from fedgrpc.data.partition import Partition, partition_labels
    from fedgrpc.data.view import format_partition, partition_svg, write_partition_svg

__all__ = [
    "Partition",
    "PartitionSpec",
    "format_partition",
    "parse_partition",
    "partition_labels",
    "partition_svg",
    "write_partition_svg",
]

_LAZY = {
    "Partition": "partition",
    "partition_labels": "partition",
    "format_partition": "view",
    "partition_svg": "view",
    "write_partition_svg": "view",
}
"""Names whose modules import numpy: loaded on first use, so the CLI can
parse `--partition` (spec only) without paying numpy's import on every
`fedgrpc` command."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"fedgrpc.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'fedgrpc.data' has no attribute {name!r}")
