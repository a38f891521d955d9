"""The `fedgrpc` command: `serve` runs the coordinator, `simulate` a whole federation.

`keygen` and `certs` write identity and TLS files, `verify` checks an
exported update (`fedgrpc.cli_identity`).
`status` and `export` operate a coordinator and its checkpoints
(`fedgrpc.cli_ops`).
Flags override the TOML file, which overrides the defaults in
`fedgrpc.config`; every flag's help states its unit and default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from fedgrpc import __version__
from fedgrpc.cli_flags import SIMULATE_STAGE_FLAGS
from fedgrpc.cli_flags import add_flag as _add_flag
from fedgrpc.cli_identity import add_identity_parsers
from fedgrpc.cli_ops import add_ops_parsers
from fedgrpc.cli_serve_flags import (
    DISTRIBUTED_PRIVACY_FLAGS,
    PRIVACY_FLAGS,
    SERVE_FLAGS,
)
from fedgrpc.config import CoordinatorConfig
from fedgrpc.data.spec import GRAMMAR as PARTITION_GRAMMAR
from fedgrpc.data.spec import PartitionSpec, parse_partition
from fedgrpc.errors import ConfigError, FedGrpcError
from fedgrpc.log import configure_logging
from fedgrpc.sim import DEFAULT_CORPUS_BYTES
from fedgrpc.sim.attack_spec import GRAMMAR as ATTACK_GRAMMAR
from fedgrpc.sim.attack_spec import AttackSpec, parse_attack
from fedgrpc.sim.churn import parse_speeds


def _add_outer_flags(parser: argparse.ArgumentParser) -> None:
    """The outer optimizer's and the round stages' flags, shared with simulate."""
    for flag in SERVE_FLAGS:
        if flag.dest.startswith("outer_") or flag.dest in SIMULATE_STAGE_FLAGS:
            _add_flag(parser, flag)


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the coordinator daemon",
        description="Run the coordinator until SIGTERM/SIGINT. Settings come from "
        "--config's [coordinator] table; flags override it.",
    )
    parser.add_argument(
        "--config",
        metavar="TOML",
        help="TOML file with a [coordinator] table "
        "(see server/coordinator.example.toml)",
    )
    for flag in SERVE_FLAGS:
        _add_flag(parser, flag)
    parser.set_defaults(handler=_serve)


def _simulate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "simulate",
        help="train a small model with a coordinator and N client processes",
        description="Start a coordinator and --clients client processes on "
        "127.0.0.1, train a model with DiLoCo (--task: a byte-level transformer "
        "on the Python standard library's sources, or a small CNN on the 8x8 "
        "digits), print how the data is split, then a summary table.",
    )
    parser.add_argument(
        "--task",
        choices=("charlm", "digits"),
        default="charlm",
        help="charlm: byte-level transformer on stdlib sources (validation loss); "
        "digits: CNN with BatchNorm on scikit-learn's bundled 8x8 digits, needs "
        "pip install 'fedgrpc[digits]' (validation loss and accuracy per round) "
        "(default: charlm)",
    )
    parser.add_argument(
        "--partition",
        type=_partition,
        default=None,
        metavar="SPEC",
        help=f"how the training data splits across clients: {PARTITION_GRAMMAR}. "
        "dirichlet: label skew, each label's shares across clients ~ Dir(ALPHA) "
        "(digits: label = the digit; charlm: the source file's top-level "
        "package); quantity: client sizes ~ Dir(ALPHA), labels mixed. Small ALPHA "
        "is skewed, large is near IID. charlm's iid keeps the contiguous shards "
        "(default: iid; README: Non-IID data)",
    )
    parser.add_argument(
        "--partition-plot",
        metavar="FILE.svg",
        help="also write the split as an SVG heatmap (clients x labels) to FILE.svg "
        "(default: none)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=4,
        metavar="N",
        help="client processes (default: 4)",
    )
    parser.add_argument(
        "--rounds", type=int, default=20, metavar="R", help="outer rounds (default: 20)"
    )
    parser.add_argument(
        "--inner-steps",
        type=int,
        default=50,
        metavar="H",
        help="inner AdamW steps per round (default: 50)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for the model and the batches (default: 0)",
    )
    _add_outer_flags(parser)
    for flag in (*PRIVACY_FLAGS, *DISTRIBUTED_PRIVACY_FLAGS):  # as `serve` has them
        _add_flag(parser, flag)
    parser.add_argument(
        "--eval-batches",
        type=int,
        default=8,
        metavar="N",
        help="char-LM validation batches scored before training and after every "
        "round (digits scores all 360 held-out images) (default: 8)",
    )
    parser.add_argument(
        "--compression",
        metavar="SPEC",
        help="update codec for every client, e.g. topk:0.01:int8 or dense:bf16 "
        "(grammar: fedgrpc serve --help, --codec; default: dense:fp32)",
    )
    parser.add_argument(
        "--secure-aggregation",
        action="store_true",
        default=None,
        help="mask every round (SecAgg+): the coordinator learns only sums; "
        "the codec defaults to dense:int8 (default: off)",
    )
    parser.add_argument(
        "--proximal-mu",
        type=float,
        metavar="MU",
        help="FedProx on every client: local training adds mu/2 * ||w - w_global||^2 "
        "to the loss (gradient + mu * (w - w_global) at each inner step); "
        "0 is plain DiLoCo (default: 0)",
    )
    parser.add_argument(
        "--corpus-bytes",
        type=int,
        metavar="BYTES",
        help=f"bytes of stdlib source to train on (default: {DEFAULT_CORPUS_BYTES})",
    )
    parser.add_argument(
        "--attack",
        action="append",
        type=_attack,
        metavar="KIND:FRACTION[:PARAM]",
        help=f"make some clients Byzantine: {ATTACK_GRAMMAR} (default: none; "
        "README: Simulate attacks)",
    )
    parser.add_argument(
        "--speeds",
        type=_speeds,
        metavar="F1,F2,...",
        help="per-client slowdown factors, one per client, each >= 1: client i "
        "sleeps (Fi - 1) x the compute time of each inner step, so it runs Fi "
        "times slower on any machine (default: all 1; README: Heterogeneous "
        "clients)",
    )
    parser.add_argument(
        "--crash-rate",
        type=float,
        metavar="P",
        help="at each sync point a client process dies (os._exit, no goodbye) "
        "with probability P (0 <= P < 1; draws from --seed and the client index) "
        "and is restarted with the same key (default: 0)",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        metavar="N",
        help="restarts per client under --crash-rate; after N it no longer "
        "crashes (default: 10)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON object on stdout "
        "(the table then goes to stderr)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the per-round progress bar"
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="serve the coordinator's live dashboard on 127.0.0.1 (a free "
        "port, this host only) while the run lasts, and print its URL",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        metavar="LEVEL",
        help="log level of the coordinator (default: WARNING)",
    )
    parser.set_defaults(handler=_simulate)


def _partition(text: str) -> PartitionSpec:
    """Parse --partition for argparse: a bad value is a usage error (the grammar)."""
    try:
        return parse_partition(text)
    except FedGrpcError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _speeds(text: str) -> tuple[float, ...]:
    """Parse --speeds for argparse (their count and range: `SimulationConfig`)."""
    try:
        return parse_speeds(text)
    except FedGrpcError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _attack(text: str) -> AttackSpec:
    """Parse --attack for argparse: a bad value is a usage error naming the grammar."""
    try:
        return parse_attack(text)
    except FedGrpcError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The whole CLI; `fedgrpc --help` lists the subcommands."""
    parser = argparse.ArgumentParser(
        prog="fedgrpc",
        description="Federated DiLoCo training over gRPC.",
        epilog="Run `fedgrpc COMMAND --help` for a command's flags. Example: "
        "fedgrpc serve --config server/coordinator.example.toml",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(sub)
    _simulate_parser(sub)
    add_identity_parsers(sub)
    add_ops_parsers(sub)
    return parser


def serve_config(args: argparse.Namespace) -> CoordinatorConfig:
    """The configuration `fedgrpc serve ARGS` runs with: TOML, then flags."""
    overrides = {flag.dest: getattr(args, flag.dest) for flag in SERVE_FLAGS}
    if args.config:
        return CoordinatorConfig.from_toml(args.config, **overrides)
    return CoordinatorConfig().replace(**overrides)


def _serve(args: argparse.Namespace) -> int:
    config = serve_config(args)
    configure_logging(config.log_format, config.log_level)
    from fedgrpc.coordinator.ops.allocator import pin_mmap_threshold
    from fedgrpc.coordinator.services.server import serve

    # Large freed blocks go back to the OS; small ones stay for reuse unless
    # the coordinator runs lean (every update on disk: memory first).
    pin_mmap_threshold(keep_free_heap=config.staging_memory_mb > 0)
    asyncio.run(serve(config))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from fedgrpc.data import format_partition, write_partition_svg
    from fedgrpc.sim.config import SimulationConfig
    from fedgrpc.sim.launcher import run_simulation, simulation_partition
    from fedgrpc.sim.report import format_summary

    configure_logging("console", args.log_level)
    options = {
        "outer_optimizer": args.outer_optimizer,
        "outer_lr": args.outer_lr,
        "outer_momentum": args.outer_momentum,
        "outer_beta1": args.outer_beta1,
        "outer_beta2": args.outer_beta2,
        "outer_tau": args.outer_tau,
        "outer_optimizer_params": args.outer_optimizer_params,
        **{name: getattr(args, name) for name in SIMULATE_STAGE_FLAGS},
        "corpus_bytes": args.corpus_bytes,
        "compression": args.compression,
        "secure_aggregation": args.secure_aggregation,
        "proximal_mu": args.proximal_mu,
        "partition": args.partition,
        "attacks": tuple(args.attack) if args.attack else None,
        "speeds": args.speeds,
        "crash_rate": args.crash_rate,
        "max_restarts": args.max_restarts,
        "privacy": {
            flag.dest: getattr(args, flag.dest)
            for flag in (*PRIVACY_FLAGS, *DISTRIBUTED_PRIVACY_FLAGS)
            if getattr(args, flag.dest) is not None
        },
    }
    config = SimulationConfig(
        clients=args.clients,
        rounds=args.rounds,
        inner_steps=args.inner_steps,
        seed=args.seed,
        task=args.task,
        eval_batches=args.eval_batches,
        dashboard=args.dashboard,
        **{k: v for k, v in options.items() if v is not None},
    )
    # The tables are the result; with --json they go to stderr so stdout parses.
    table_stream = sys.stderr if args.json else sys.stdout
    split = simulation_partition(config)  # what every client will compute
    table_stream.write(format_partition(split) + "\n")
    if args.partition_plot:
        try:
            write_partition_svg(split, args.partition_plot)
        except OSError as exc:
            raise ConfigError(
                f"--partition-plot {args.partition_plot}: cannot write it "
                f"({exc.strerror or exc})"
            ) from None
    table_stream.flush()
    summary = run_simulation(
        config, progress=not args.no_progress, on_dashboard=_print_dashboard
    )
    table_stream.write(format_summary(summary) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(summary.as_dict()) + "\n")
    return 0


def _print_dashboard(url: str) -> None:
    """Where `simulate --dashboard` serves (stderr: stdout may be --json)."""
    sys.stderr.write(f"dashboard: {url} (open it in a browser on this host)\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; errors become one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except FedGrpcError as exc:
        sys.stderr.write(f"fedgrpc {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
