"""The `serve` flags of secure aggregation: masking, its graph, its index set.

One job, apart from `cli_serve_flags` (whose `SERVE_FLAGS` includes
`SECURE_AGGREGATION_FLAGS` right after the core flags): SecAgg+ itself
(`secure_aggregation`, threshold, degree, clip), and the shared sparse
index set (`secagg_density`, its random share, and its ranking rule: the
"chunk_norm" ranking of issue 18, `compress.chunk_norms`).
"""

from __future__ import annotations

from fedgrpc.cli_flags import Flag
from fedgrpc.config import CoordinatorConfig
from fedgrpc.config.secure import INDEX_RULES

_D = CoordinatorConfig()

SECURE_AGGREGATION_FLAGS = (
    Flag("--secure-aggregation", "SecAgg+ masking: the coordinator learns "
         "only each round's sum; needs --codec dense:int8 or dense:int4 and "
         "--min-clients >= 3; excludes robust aggregation (default: off)",
         const=True),
    Flag("--secagg-threshold", "Shamir threshold t: a count, or a fraction "
         "of each neighbourhood (default: the fork-safe graph rule)",
         float, "T"),
    Flag("--secagg-degree", "neighbours per client (default: complete graph "
         "up to 100 participants, Harary degree O(log n) above)", int, "K"),
    Flag("--secagg-clip", "round-wide clip of secure-aggregation codes; "
         "clipped remainders stay in clients' residuals "
         f"(default: {_D.secagg_clip:g})", float, "C"),
    Flag("--secagg-density", "fraction (0, 1] of the coordinates masked per "
         "secure round: 1 masks all (dense int8, the safe default); below 1 a "
         "shared index set of ceil(D x parameters) positions (--secagg-index-"
         "rule plus random ones), a divergence guard falling back to dense "
         "rounds; experimental, refused with --shard "
         f"(default: {_D.secagg_density:g})", float, "D"),
    Flag("--secagg-random-fraction", "share in [0, 1] of the shared index "
         "set drawn at random from the round nonce, so every coordinate can "
         "flush its residual; only with --secagg-density < 1 "
         f"(default: {_D.secagg_random_fraction:g})", float, "EPS"),
    Flag("--secagg-index-rule", "how the shared index set is ranked (only "
         "with --secagg-density < 1): momentum (top outer momentum), "
         "chunk_norm (whole chunks of largest summed client residual RMS, "
         "which clients append to their masked push; not with distributed "
         "DP) or residual_age (last-seen mean per round waited x rounds "
         "since sent, so the set rotates; best measured with --outer-"
         "optimizer sparseloco) "
         f"(default: {_D.secagg_index_rule})", metavar="RULE",
         choices=INDEX_RULES),
    Flag("--secagg-index-chunk", "coordinates per chunk of the chunk_norm "
         "rule; each masked push carries ceil(parameters / C) more values "
         f"(default: {_D.secagg_index_chunk})", int, "C"),
)  # fmt: skip
"""SecAgg+ and its shared index set (`config.coordinator`'s `secagg_*`)."""
