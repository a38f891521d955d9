"""The convergence sim's codecs: the library's, plus issue 18's bench-only ones.

Spec strings extend the library grammar (`fedgrpc.compress.parse_codec`):

    topk:D:V:bR   top-k over runs of R coordinates (`_run_topk`)
    randk:D[:V]   seeded random-k, no positions on the wire (`_rand_k`)
    randk-shared:D[:V]  the same, every worker drawing the same positions
                  (one shared index set a round, as secure aggregation needs)

Anything else is the library's codec, except `lowrank[-shared]:R[:V]`:
low-rank factors need the model's tensor shapes and a whole update at
once, not blocks, so the convergence sim builds them itself (`_low_rank`).
Bench-only codecs never reach a coordinator: no wire codec carries them.
"""

from __future__ import annotations

import numpy as np
from _rand_k import RandKCodec
from _run_topk import RunTopKCodec

from fedgrpc.compress import make_codec, parse_codec
from fedgrpc.compress.codec import BlockCodec
from fedgrpc.domain.codecs import TopK
from fedgrpc.errors import ConfigError


def bench_codec(
    spec: str, rng: np.random.Generator | None = None, shared_seed: int = 0
) -> BlockCodec:
    """The codec `spec` names (grammar above).

    `shared_seed` seeds a shared index set's positions: the same for every
    worker of a run.

    Raises:
        ConfigError: a bench spec that does not parse.
    """
    generator = rng if rng is not None else np.random.default_rng()
    kind, _, rest = spec.partition(":")
    if kind in ("randk", "randk-shared"):
        config = parse_codec("topk:" + rest)
        assert isinstance(config, TopK)  # the topk grammar parses D[:V]
        shared = kind == "randk-shared"
        positions = np.random.default_rng([shared_seed, 1]) if shared else None
        return RandKCodec(config.density, config.values, generator, positions)
    head, sep, run_text = spec.rpartition(":")
    if not (sep and head.startswith("topk:") and run_text.startswith("b")):
        return make_codec(parse_codec(spec), rng=rng)
    config = parse_codec(head)
    if not isinstance(config, TopK) or not run_text[1:].isdigit():
        raise ConfigError(f"run codec {spec!r} is invalid: expected topk:D:V:bR")
    return RunTopKCodec(config.density, config.values, generator, int(run_text[1:]))
