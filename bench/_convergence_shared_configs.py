"""bench/convergence.py's shared-index configs (`_convergence_shared` runs them).

Not a benchmark itself: the registry, apart from the simulation so each
stays one job. Codec strings `shared:DENSITY:EPSILON[:noguard][:age][:cap]
[:bitsB][:chunkC]` are `_convergence_shared`'s grammar; measured results
are in its docstring and the README's "Secure aggregation".
"""

from __future__ import annotations

from typing import Any

SPARSELOCO_OUTER = {"feedback_decay": 0.95, "fixed_outer": True}
"""convergence.py's SPARSELOCO: the clients' residual decays; outer SGD lr 1."""
SHARED_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "shared10": (
        "shared 10 % set: top |outer momentum| + eps 0.1 random, int8 clip, EF",
        {"codec": "shared:0.1:0.1"},
    ),
    "shared10-age": (
        "shared 10 % set ranked by ResidualEstimate (rate x age) + eps 0.1, int8",
        {"codec": "shared:0.1:0.1:age"},
    ),
    "shared10-age-cap": (
        "as shared10-age, clip never above round 0's H x lr (ClipRule.max_clip)",
        {"codec": "shared:0.1:0.1:age:cap"},
    ),
    "shared10-cap": (
        "as shared10 (top |momentum|), clip never above H x lr",
        {"codec": "shared:0.1:0.1:cap"},
    ),
    "randk10-shared-cap": (
        "shared random 10 % set (the pilot), clip never above H x lr, guard",
        {"codec": "shared:0.1:1.0:cap"},
    ),
    "shared10-age-b14": (
        "as shared10-age with 14-bit values (the 16-bit ring word W = 4 allows)",
        {"codec": "shared:0.1:0.1:age:bits14"},
    ),
    "shared10-chunk": (
        "shared 10 % set: chunks (C 64) of largest summed residual RMS + eps 0.1",
        {"codec": "shared:0.1:0.1:chunk64"},
    ),
    "shared10-chunk16": (
        "as shared10-chunk with chunks of 16 (a 4x longer tail, finer choice)",
        {"codec": "shared:0.1:0.1:chunk16"},
    ),
    "shared10-chunk-noguard": (
        "as shared10-chunk without the divergence guard: the rule's own quality",
        {"codec": "shared:0.1:0.1:chunk64:noguard"},
    ),
    # Issue 18: SparseLoCo's decaying residual as the momentum (outer SGD lr 1):
    # nothing amplifies a flushed stale residual, so maybe no guard is needed.
    "shared10-chunk16-sloco-noguard": (
        "as shared10-chunk16 with SparseLoCo (EF decay 0.95, outer SGD lr 1), no guard",
        {"codec": "shared:0.1:0.1:chunk16:noguard", **SPARSELOCO_OUTER},
    ),
    # The shared random set's best outer step (bench codec randk-shared, lr 2.5,
    # decay 0.6: 1.734 without a guard) for the ranked and random ring sets.
    "shared10-chunk16-sloco-lr2.5-b60-noguard": (
        "as shared10-chunk16, SparseLoCo (EF decay 0.6, outer SGD lr 2.5), no guard",
        {
            "codec": "shared:0.1:0.1:chunk16:noguard",
            **SPARSELOCO_OUTER,
            "feedback_decay": 0.6,
            "outer_lr": 2.5,
        },
    ),
    "randk10-shared-sloco-lr2.5-b60-noguard": (
        "shared random 10 % set in the ring, SparseLoCo (decay 0.6, lr 2.5), no guard",
        {
            "codec": "shared:0.1:1.0:noguard",
            **SPARSELOCO_OUTER,
            "feedback_decay": 0.6,
            "outer_lr": 2.5,
        },
    ),
    # The residual estimate lost under Nesterov (it flushes stale residuals,
    # which the momentum amplifies); SparseLoCo's short memory has no such burst.
    "shared10-age-sloco-lr2.5-b60-noguard": (
        "as shared10-age, SparseLoCo (EF decay 0.6, outer SGD lr 2.5), no guard",
        {
            "codec": "shared:0.1:0.1:age:noguard",
            **SPARSELOCO_OUTER,
            "feedback_decay": 0.6,
            "outer_lr": 2.5,
        },
    ),
    "shared10-agedecay-sloco-lr2.5-b60-noguard": (
        "as shared10-age-sloco-lr2.5-b60-noguard, the estimate knowing the decay",
        {
            "codec": "shared:0.1:0.1:agedecay:noguard",
            **SPARSELOCO_OUTER,
            "feedback_decay": 0.6,
            "outer_lr": 2.5,
        },
    ),
    "shared10-age-eps30-sloco-lr2.5-b60-noguard": (
        "as shared10-age-sloco-lr2.5-b60-noguard with eps 0.3 random positions",
        {
            "codec": "shared:0.1:0.3:age:noguard",
            **SPARSELOCO_OUTER,
            "feedback_decay": 0.6,
            "outer_lr": 2.5,
        },
    ),
    "shared10-age-eps30-sloco-lr2-b60-noguard": (
        "as shared10-age-eps30-sloco-lr2.5-b60-noguard with outer lr 2",
        {
            "codec": "shared:0.1:0.3:age:noguard",
            **SPARSELOCO_OUTER,
            "feedback_decay": 0.6,
            "outer_lr": 2.0,
        },
    ),
    "shared10-age-eps30-sloco-lr3-b60-noguard": (
        "as shared10-age-eps30-sloco-lr2.5-b60-noguard with outer lr 3",
        {
            "codec": "shared:0.1:0.3:age:noguard",
            **SPARSELOCO_OUTER,
            "feedback_decay": 0.6,
            "outer_lr": 3.0,
        },
    ),
    "shared10-age-eps30-sloco-lr2.5-b50-noguard": (
        "as shared10-age-eps30-sloco-lr2.5-b60-noguard with EF decay 0.5",
        {
            "codec": "shared:0.1:0.3:age:noguard",
            **SPARSELOCO_OUTER,
            "feedback_decay": 0.5,
            "outer_lr": 2.5,
        },
    ),
    "shared10-age-eps30-sloco-lr2.5-b40-noguard": (
        "as shared10-age-eps30-sloco-lr2.5-b60-noguard with EF decay 0.4",
        {
            "codec": "shared:0.1:0.3:age:noguard",
            **SPARSELOCO_OUTER,
            "feedback_decay": 0.4,
            "outer_lr": 2.5,
        },
    ),
    "shared10-age-eps30-sloco-lr2.5-b70-noguard": (
        "as shared10-age-eps30-sloco-lr2.5-b60-noguard with EF decay 0.7",
        {
            "codec": "shared:0.1:0.3:age:noguard",
            **SPARSELOCO_OUTER,
            "feedback_decay": 0.7,
            "outer_lr": 2.5,
        },
    ),
    "shared10-age-eps50-sloco-lr2.5-b60-noguard": (
        "as shared10-age-sloco-lr2.5-b60-noguard with eps 0.5 random positions",
        {
            "codec": "shared:0.1:0.5:age:noguard",
            **SPARSELOCO_OUTER,
            "feedback_decay": 0.6,
            "outer_lr": 2.5,
        },
    ),
    "shared10-age-sloco-lr2.5-b80-noguard": (
        "as shared10-age-sloco-lr2.5-b60-noguard with EF decay 0.8",
        {
            "codec": "shared:0.1:0.1:age:noguard",
            **SPARSELOCO_OUTER,
            "feedback_decay": 0.8,
            "outer_lr": 2.5,
        },
    ),
    "shared10-chunk16-sloco": (
        "as shared10-chunk16 with SparseLoCo (EF decay 0.95, outer SGD lr 1), guard",
        {"codec": "shared:0.1:0.1:chunk16", **SPARSELOCO_OUTER},
    ),
    "shared1-chunk": (
        "shared 1 % set: chunks (C 256) of largest summed residual RMS + eps 0.1",
        {"codec": "shared:0.01:0.1:chunk256"},
    ),
    "shared1": (
        "shared 1 % set: top |outer momentum| + eps 0.1 random, int8 clip, EF",
        {"codec": "shared:0.01:0.1"},
    ),
    "shared1-age": (
        "shared 1 % set ranked by ResidualEstimate + eps 0.1, int8",
        {"codec": "shared:0.01:0.1:age"},
    ),
    "randk10-shared": (
        "shared random 10 % set (the issue's pilot), int8 clip, EF, guard",
        {"codec": "shared:0.1:1.0"},
    ),
    "randk10-shared-noguard": (
        "shared random 10 % set (the issue's pilot), no divergence guard",
        {"codec": "shared:0.1:1.0:noguard"},
    ),
}
"""bench/convergence.py's shared-index configs: same outer step as topk10."""
SHARED_ABLATIONS = frozenset(SHARED_CONFIGS) - {"shared10", "shared1"}
"""Run only when named: the goals are shared10 vs topk10, shared1 vs topk1."""
