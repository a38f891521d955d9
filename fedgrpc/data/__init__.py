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

from fedgrpc.data.partition import Partition, partition_labels
from fedgrpc.data.spec import PartitionSpec, parse_partition
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
