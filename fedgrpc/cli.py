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
from fedgrpc.cli_flags import SIMULATE_STAGE_FLAGS, STAGE_FLAGS
from fedgrpc.cli_flags import Flag as _Flag
from fedgrpc.cli_flags import add_flag as _add_flag
from fedgrpc.cli_identity import add_identity_parsers
from fedgrpc.cli_ops import add_ops_parsers
from fedgrpc.config import OUTER_OPTIMIZERS, CoordinatorConfig
from fedgrpc.errors import FedGrpcError
from fedgrpc.log import configure_logging
from fedgrpc.sim import DEFAULT_CORPUS_BYTES


def _add_outer_flags(parser: argparse.ArgumentParser) -> None:
    """The outer optimizer's and the round stages' flags, shared with simulate."""
    for flag in _SERVE_FLAGS:
        if flag.dest.startswith("outer_") or flag.dest in SIMULATE_STAGE_FLAGS:
            _add_flag(parser, flag)


_D = CoordinatorConfig()
_SERVE_FLAGS = (
    _Flag("--listen", f"address to bind; port 0 picks a free one (default: "
          f"{_D.listen})", metavar="HOST:PORT"),
    _Flag("--ready-file", "write the bound HOST:PORT here (atomically) once "
          "serving", metavar="PATH"),
    _Flag("--min-clients", "updates a round needs to be applied "
          f"(default: {_D.min_clients})", int, "N"),
    _Flag("--min-client-fraction", "quorum as a fraction of the connected "
          "clients; a round needs max(--min-clients, ceil(F x connected)) "
          f"updates (default: {_D.min_client_fraction:g}, off)", float, "F"),
    _Flag("--max-clients", "clients admitted; more get RESOURCE_EXHAUSTED "
          f"(default: {_D.max_clients})", int, "N"),
    _Flag("--inner-steps", "inner steps per round announced to clients "
          f"(default: {_D.inner_steps})", int, "H"),
    _Flag("--round-timeout-s", "seconds after a round's first update before it "
          "closes with what it has (skipped below --min-clients); updates still "
          f"streaming get as long again (default: {_D.round_timeout_s:g})",
          float, "S"),
    _Flag("--outer-optimizer", "outer optimizer applied to the mean "
          "pseudo-gradient: nesterov (DiLoCo: SGD with Nesterov momentum), "
          "fedavg, fedavgm (heavy-ball server momentum), fedadagrad, fedadam, "
          "fedyogi (adaptive per-coordinate steps, Reddi et al. 2021), or "
          "sparseloco (plain SGD; the clients' decaying error-feedback "
          "residual is the momentum; for top-k), or your own "
          "package.module:Class (default: nesterov)", metavar="|".join(
          OUTER_OPTIMIZERS) + "|MODULE:CLASS"),
    _Flag("--outer-lr", "outer learning rate (default: 0.7 for nesterov and "
          "fedavgm, 1.0 for fedavg and sparseloco, 0.1 for fedadagrad, 0.01 "
          "for fedadam and fedyogi)", float, "LR"),
    _Flag("--outer-momentum", "outer momentum in [0, 1) of nesterov and "
          "fedavgm (default: 0.9 for those, 0 otherwise)", float, "M"),
    _Flag("--outer-beta1", "first-moment decay beta1 in [0, 1) of fedadagrad, "
          "fedadam and fedyogi (default: 0.9)", float, "B1"),
    _Flag("--outer-beta2", "second-moment decay beta2 in [0, 1) of fedadam and "
          "fedyogi (default: 0.99)", float, "B2"),
    _Flag("--outer-tau", "adaptivity tau > 0 of fedadagrad, fedadam and "
          "fedyogi: v starts at tau^2, steps divide by sqrt(v) + tau "
          "(default: 0.001; the paper searches 1e-1 .. 1e-5)", float, "TAU"),
    *STAGE_FLAGS,
    _Flag("--feedback-decay", "clients' error-feedback decay beta in (0, 1] "
          "(default: 0.95 for sparseloco, 1 otherwise)", float, "BETA"),
    _Flag("--max-update-norm-growth", "divergence guard: skip a round whose mean "
          "update norm is over this many times the recent median, 0 disables "
          f"(default: {_D.max_update_norm_growth:g})", float, "X"),
    _Flag("--codec", "update codec: dense[:fp32|bf16|fp16|int8|int4] or "
          "topk:DENSITY[:int8|int4|bf16|fp32], e.g. topk:0.01:int8 "
          f"(default: {_D.codec})", metavar="SPEC"),
    _Flag("--secure-aggregation", "SecAgg+ masking: the coordinator learns "
          "only each round's sum; needs --codec dense:int8 or dense:int4 and "
          "--min-clients >= 3; excludes robust aggregation (default: off)",
          const=True),
    _Flag("--secagg-threshold", "Shamir threshold t: a count, or a fraction "
          "of each neighbourhood (default: the fork-safe graph rule)",
          float, "T"),
    _Flag("--secagg-degree", "neighbours per client (default: complete graph "
          "up to 100 participants, Harary degree O(log n) above)", int, "K"),
    _Flag("--secagg-clip", "round-wide clip of secure-aggregation codes; "
          "clipped remainders stay in clients' residuals "
          f"(default: {_D.secagg_clip:g})", float, "C"),
    _Flag("--secagg-density", "fraction (0, 1] of the coordinates masked per "
          "secure round: 1 masks all (dense int8, the safe default); below 1 "
          "the coordinator announces a shared index set of ceil(D x "
          "parameters) positions (top outer momentum plus random ones), with "
          "a divergence guard falling back to dense rounds; experimental "
          f"(default: {_D.secagg_density:g})", float, "D"),
    _Flag("--secagg-random-fraction", "share in [0, 1] of the shared index "
          "set drawn at random from the round nonce, so every coordinate can "
          "flush its residual; only with --secagg-density < 1 "
          f"(default: {_D.secagg_random_fraction:g})", float, "EPS"),
    _Flag("--chunk-bytes", "payload bytes per streamed chunk, both directions "
          f"(default: {_D.chunk_bytes})", int, "BYTES"),
    _Flag("--heartbeat-interval-s", "seconds between client heartbeats, "
          "announced at Join: clients send at least this often "
          f"(default: {_D.heartbeat_interval_s:g})", float, "S"),
    _Flag("--session-timeout-s", "evict a client silent this long, even with its "
          "connection open; must exceed --heartbeat-interval-s "
          f"(default: {_D.session_timeout_s:g})", float, "S"),
    _Flag("--tls-cert", "PEM certificate chain to serve TLS with; needs "
          "--tls-key (default: plaintext; see `fedgrpc certs`)", metavar="PEM"),
    _Flag("--tls-key", "PEM private key of --tls-cert", metavar="PEM"),
    _Flag("--tls-client-ca", "PEM CA certificate(s): require client "
          "certificates signed by it (mutual TLS); needs --tls-cert "
          "(default: no client certificates)", metavar="PEM"),
    _Flag("--identity-key", "the coordinator's Ed25519 private key (PEM, from "
          "`fedgrpc keygen`): signs every model sent; required with "
          "--allowed-client-keys (default: a throwaway key, open enrollment "
          "only)", metavar="PEM"),
    _Flag("--allowed-client-keys", "who may join: a directory of *.pub files, "
          "or a file of PEM public keys and/or 64-hex fingerprints",
          metavar="PATH"),
    _Flag("--open-enrollment", "let any client key join (each still proves "
          "it holds its key and signs its updates); for local simulation, "
          "logged as a warning (default: off)", const=True),
    _Flag("--update-signatures", "required: verify every update header, "
          "chunk and commit; off: skip it, only with --open-enrollment, to "
          "measure the cost (default: required)", choices=("required", "off")),
    _Flag("--checkpoint-dir", "write a checkpoint after every applied round "
          "(and at shutdown) here, keeping the newest --checkpoint-keep; resume "
          "from the newest intact one at start (default: none)", metavar="DIR"),
    _Flag("--checkpoint-keep", "checkpoints kept in --checkpoint-dir "
          f"(default: {_D.checkpoint_keep})", int, "K"),
    _Flag("--metrics-listen", "serve Prometheus metrics at "
          "http://HOST:PORT/metrics, plain HTTP (default: off)",
          metavar="HOST:PORT"),
    _Flag("--max-rounds", "rounds the run lasts; after the last one closes the "
          "coordinator checkpoints, tells clients the run finished, and exits 0 "
          "once they left (at most --session-timeout-s later) (default: 0, no "
          "limit)", int, "N"),
    _Flag("--init-model", "the run's initial weights: a safetensors file "
          "(save_file(dict(model.named_parameters()), PATH)) or a fedgrpc "
          "checkpoint (round-N.ckpt or its directory; weights only); it fixes "
          "the tensors, shapes and dtypes clients must have. Ignored when "
          "--checkpoint-dir has a run to resume", metavar="PATH"),
    _Flag("--seed-from-first-client", "let the first client to join upload "
          "the initial weights (and so decide the model); for quick local "
          "runs. Without it or --init-model (or a checkpoint to resume) serve "
          "refuses to start", const=True),
    _Flag("--log-format", "log lines on stderr (default: json)",
          choices=("json", "console")),
    _Flag("--log-level", "DEBUG, INFO, WARNING or ERROR (default: INFO)",
          metavar="LEVEL"),
)  # fmt: skip


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
    for flag in _SERVE_FLAGS:
        _add_flag(parser, flag)
    parser.set_defaults(handler=_serve)


def _simulate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "simulate",
        help="train a small model with a coordinator and N client processes",
        description="Start a coordinator and --clients client processes on "
        "127.0.0.1, train a byte-level transformer on the Python standard "
        "library's sources with DiLoCo, and print a summary table.",
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
    parser.add_argument(
        "--eval-batches",
        type=int,
        default=8,
        metavar="N",
        help="validation batches scored before and after (default: 8)",
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
        "--json",
        action="store_true",
        help="print the summary as one JSON object on stdout "
        "(the table then goes to stderr)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the per-round progress bar"
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        metavar="LEVEL",
        help="log level of the coordinator (default: WARNING)",
    )
    parser.set_defaults(handler=_simulate)


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
    overrides = {flag.dest: getattr(args, flag.dest) for flag in _SERVE_FLAGS}
    if args.config:
        return CoordinatorConfig.from_toml(args.config, **overrides)
    return CoordinatorConfig().replace(**overrides)


def _serve(args: argparse.Namespace) -> int:
    config = serve_config(args)
    configure_logging(config.log_format, config.log_level)
    from fedgrpc.coordinator.services.server import serve

    asyncio.run(serve(config))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from fedgrpc.sim.launcher import SimulationConfig, run_simulation
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
    }
    config = SimulationConfig(
        clients=args.clients,
        rounds=args.rounds,
        inner_steps=args.inner_steps,
        seed=args.seed,
        eval_batches=args.eval_batches,
        **{k: v for k, v in options.items() if v is not None},
    )
    summary = run_simulation(config, progress=not args.no_progress)
    # The table is the result; with --json it moves to stderr so stdout parses.
    table_stream = sys.stderr if args.json else sys.stdout
    table_stream.write(format_summary(summary) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(summary.as_dict()) + "\n")
    return 0


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
