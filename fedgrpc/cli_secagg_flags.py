"""The `serve` flags of the shared index set's ranking rule (`secagg_index_*`).

Apart from `cli_serve_flags` (which holds the other secure-aggregation
flags in `CORE_FLAGS`): the rule and its chunk size are one job, the
"chunk_norm" ranking of issue 18 (`compress.chunk_norms`). `SERVE_FLAGS`
there includes `SHARED_INDEX_FLAGS` right after the core flags.
"""

from __future__ import annotations

from fedgrpc.cli_flags import Flag
from fedgrpc.config import CoordinatorConfig

_D = CoordinatorConfig()

SHARED_INDEX_FLAGS = (
    Flag("--secagg-index-rule", "how the shared index set is ranked (only "
         "with --secagg-density < 1): momentum (top outer momentum) or "
         "chunk_norm (whole chunks of largest summed client residual RMS, "
         "which clients append to their masked push; not with distributed "
         f"DP) (default: {_D.secagg_index_rule})", metavar="RULE",
         choices=("momentum", "chunk_norm")),
    Flag("--secagg-index-chunk", "coordinates per chunk of the chunk_norm "
         "rule; each masked push carries ceil(parameters / C) more values "
         f"(default: {_D.secagg_index_chunk})", int, "C"),
)  # fmt: skip
"""The shared index set's rule (`config.coordinator`'s `secagg_index_*`)."""
