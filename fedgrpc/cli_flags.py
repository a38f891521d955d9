"""The flag table's building blocks, and the round-stage flags (`serve`, `simulate`).

Apart from `cli` so the command module keeps to its job (parsers and
handlers); the stage flags live here because `simulate` reuses them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass

SIMULATE_STAGE_FLAGS = (
    "aggregator", "trimmed_mean_beta", "krum_f", "multi_krum_m",
    "geomedian_iters", "geomedian_eps", "clipping_tau", "clipping_iters",
    "norm_bound", "norm_bound_multiple", "accumulator", "spool_dir",
    "selection", "clients_per_round", "trust", "trust_decay",
    "trust_soft_threshold", "trust_hard_threshold", "trust_quarantine_rounds",
    "round_mode", "round_duration_s", "buffer_size", "max_staleness",
    "staleness_exponent", "fragments", "streaming_overlap_steps", "streaming_mix",
)  # fmt: skip
"""Stage settings `simulate` passes through to its coordinator (the trust
flags live with the robustness section's, `cli_serve_flags.ROBUSTNESS_FLAGS`)."""


@dataclass(frozen=True, slots=True)
class Flag:
    """One `serve` flag; its dest is also the CoordinatorConfig field it sets."""

    name: str
    help: str
    type: Callable[[str], object] = str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    const: object = None
    """Set, the flag takes no value and stores this (a switch)."""

    @property
    def dest(self) -> str:
        """`--outer-lr` -> `outer_lr`: the config field (and argparse dest)."""
        return self.name.removeprefix("--").replace("-", "_")


def add_flag(parser: argparse.ArgumentParser, flag: Flag) -> None:
    """Add one flag; a switch (`const`) defaults to None so TOML still applies."""
    if flag.const is not None:
        # Default None, not False: an absent switch must not override the TOML.
        parser.add_argument(
            flag.name, action="store_const", const=flag.const, help=flag.help
        )
        return
    parser.add_argument(
        flag.name,
        type=flag.type,
        metavar=flag.metavar,
        choices=flag.choices,
        help=flag.help,
    )


def json_table(text: str) -> dict[str, object]:
    """A `--*-params` value: a JSON object of constructor keyword arguments."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('expected a JSON object, e.g. {"beta": 0.2}')
    return value


STAGE_FLAGS = (
    Flag("--aggregator", "how a round's updates become one: mean "
          "(sample-weighted), median (coordinate-wise), trimmed_mean, krum, "
          "multi_krum, geometric_median, centered_clipping, hybrid (norm "
          "bound, then trimmed mean), or package.module:Class; all but mean "
          "keep every update on disk (--spool-dir) and exclude "
          "--secure-aggregation (default: mean)", metavar="NAME"),
    Flag("--aggregator-params", "JSON object of keyword arguments for a "
          "package.module:Class aggregator (default: {})", json_table, "JSON"),
    Flag("--trimmed-mean-beta", "fraction in [0, 0.5) trimmed from each side "
          "per coordinate; only with --aggregator trimmed_mean or hybrid "
          "(default: 0.1)", float, "BETA"),
    Flag("--krum-f", "Byzantine updates Krum assumes, 2f + 2 < n; only with "
          "--aggregator krum or multi_krum (default: the most n allows)",
          int, "F"),
    Flag("--multi-krum-m", "updates Multi-Krum averages; only with "
          "--aggregator multi_krum (default: n - f)", int, "M"),
    Flag("--geomedian-iters", "at most this many Weiszfeld steps; only with "
          "--aggregator geometric_median (default: 10)", int, "T"),
    Flag("--geomedian-eps", "Weiszfeld smoothing nu > 0; only with "
          "--aggregator geometric_median (default: 1e-6)", float, "NU"),
    Flag("--clipping-tau", "centered clipping radius tau > 0; only with "
          "--aggregator centered_clipping (default: at each step, the "
          "updates' median distance to the current centre)", float, "TAU"),
    Flag("--clipping-iters", "centered clipping passes L per round; only "
          "with --aggregator centered_clipping (default: 3)", int, "L"),
    Flag("--norm-bound", "clip every update to this L2 norm before the "
          "aggregator (any aggregator; uses the spool; not with "
          "--secure-aggregation) (default: off; hybrid: 1 x the median "
          "norm)", float, "B"),
    Flag("--norm-bound-multiple", "clip every update to this multiple of "
          "the round's median update norm; exclusive with --norm-bound "
          "(default: off; hybrid: 1.0)", float, "K"),
    Flag("--accumulator", "how a round holds updates: auto (streaming sum, "
          "or the disk spool when the aggregator needs every update), "
          "streaming_sum or spool (default: auto)",
          choices=("auto", "streaming_sum", "spool")),
    Flag("--spool-dir", "directory for spooled updates, d x 4 bytes each, "
          "deleted after each round (default: <tmp>/fedgrpc-spool-<uid>)",
          metavar="DIR"),
    Flag("--outer-optimizer-params", "JSON object of keyword arguments for a "
          "package.module:Class outer optimizer (TOML: [coordinator."
          "outer_optimizer_params]) (default: {})", json_table, "JSON"),
    Flag("--selection", "who takes part in a round: all connected clients, "
         "or --clients-per-round of them drawn from the round nonce: random, "
         "loss (favours high-loss clients) or throughput (fast uploaders); "
         "the others keep training and push when selected (default: all)",
         choices=("all", "random", "loss", "throughput")),
    Flag("--clients-per-round", "clients a round selects, >= --min-clients; "
         "only with --selection random, loss or throughput (default: all)",
         int, "K"),
)  # fmt: skip
