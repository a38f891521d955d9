"""`fedgrpc status`, `guard-reset` and `export`: operating a coordinator from a shell.

`status` asks a running coordinator (AdminService/GetStatus, or the gRPC
health service with `--health`) and prints tables: the round, each client's
credit (samples contributed), losses and traffic. `guard-reset` clears the
divergence guard's history (AdminService/ResetDivergenceGuard). `export` turns a
checkpoint into a model file. Argparse and presentation only; the work is in
`fedgrpc.client.admin` and `fedgrpc.coordinator.ops.model_export`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fedgrpc.config import ClientConfig

if TYPE_CHECKING:
    from fedgrpc.client.admin import ClientRow, CoordinatorStatus, RoundRow

RECENT_ROUNDS_SHOWN = 10
"""Closed rounds `fedgrpc status` lists (all of them with --json)."""


def add_ops_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `status`, `guard-reset` and `export` on the `fedgrpc` command."""
    _status_parser(sub)
    _guard_reset_parser(sub)
    _export_parser(sub)


def _status_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "status",
        help="show a running coordinator's round, clients and traffic",
        description="Ask a coordinator for its status (AdminService/GetStatus) "
        "and print the round, each client's credit and the recent rounds.",
    )
    parser.add_argument(
        "--target", required=True, metavar="HOST:PORT", help="the coordinator"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )
    parser.add_argument(
        "--health",
        action="store_true",
        help="only check grpc.health.v1: print SERVING or NOT_SERVING, exit 0 "
        "if serving, else 1 (for container health checks)",
    )
    _add_connection_args(parser)
    parser.set_defaults(handler=_status)


def _guard_reset_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = sub.add_parser(
        "guard-reset",
        help="clear a running coordinator's divergence guard history",
        description="Make the divergence guard forget its recent update norms "
        "(AdminService/ResetDivergenceGuard), e.g. after hostile updates "
        "poisoned it and it refuses every honest round. It warms up again "
        "over the next 3 applied rounds, checking only for NaN/Inf meanwhile.",
    )
    parser.add_argument("--target", "--coordinator", dest="target", required=True,
                        metavar="HOST:PORT", help="the coordinator")  # fmt: skip
    _add_connection_args(parser)
    parser.set_defaults(handler=_guard_reset)


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    """TLS and timeout flags every AdminService command takes."""
    parser.add_argument("--tls-ca", metavar="PEM", help="CA of the "
                        "coordinator's certificate: connect with TLS "
                        "(default: plaintext)")  # fmt: skip
    parser.add_argument("--tls-cert", metavar="PEM", help="client certificate "
                        "for mutual TLS (needs --tls-key)")  # fmt: skip
    parser.add_argument("--tls-key", metavar="PEM", help="key of --tls-cert")
    parser.add_argument("--proxy", metavar="URL", help="reach the coordinator "
                        "through this HTTP CONNECT proxy, "
                        "http://[user:password@]host:port, or 'direct' for "
                        "no proxy (default: gRPC's grpc_proxy / https_proxy / "
                        "http_proxy environment variables, minus the hosts in "
                        "no_grpc_proxy / no_proxy)")  # fmt: skip
    parser.add_argument("--admin-token-file", metavar="PATH", help="file "
                        "holding the coordinator's admin token (its "
                        "admin_token_file), sent as `authorization: Bearer`; "
                        "not needed on the coordinator's host unless it sets "
                        "admin_access = credential, nor with an admin "
                        "client certificate (`fedgrpc certs --admin`)")  # fmt: skip
    parser.add_argument(
        "--timeout-s", type=float, default=10.0, metavar="S",
        help="seconds to wait for the answer (default: 10)",
    )  # fmt: skip


def _export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "export",
        help="write a checkpoint's global model as a state_dict file",
        description="Write the global model of a checkpoint (a round-<N>.ckpt "
        "file, or the newest intact one in a checkpoint directory) as a plain "
        "state_dict: torch.load(PATH, weights_only=True) or safetensors. It "
        "holds every federated tensor (parameters and averaged buffers) and "
        "every alias of a tied weight, so model.load_state_dict(..., "
        "strict=True) works when every tensor was federated; tensors clients "
        "kept to themselves (frozen parameters, local_modules) are not in it.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="checkpoint file or checkpoint_dir")  # fmt: skip
    parser.add_argument("--out", required=True, metavar="FILE", help="file to write")
    parser.add_argument(
        "--format", choices=("torch", "safetensors"),
        help="file format (default: safetensors if --out ends in .safetensors, "
        "else torch)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", default="float32",
        choices=("float32", "native", "bfloat16", "float16", "float64"),
        help="float tensors' dtype: float32 (default: the coordinator's master "
        "precision), native (each tensor in the dtype its clients hold), or a "
        "cast to bfloat16, float16 or float64; integer buffers stay integers",
    )  # fmt: skip
    parser.set_defaults(handler=_export)


def _client_config(args: argparse.Namespace) -> ClientConfig:
    return ClientConfig(
        tls_ca=args.tls_ca or "", tls_cert=args.tls_cert or "",
        tls_key=args.tls_key or "", proxy=args.proxy or "",
    )  # fmt: skip


def _guard_reset(args: argparse.Namespace) -> int:
    from fedgrpc.client.admin import reset_divergence_guard

    done = reset_divergence_guard(args.target, _client_config(args), args.timeout_s)
    sys.stdout.write(
        f"divergence guard reset at round {done.round_id}: forgot "
        f"{done.norms_dropped} recent update norm(s)"
        + (f" and {done.secure_norms_dropped} of secure rounds" if
           done.secure_norms_dropped else "")
        + "; it warms up again over the next 3 applied rounds\n"
    )  # fmt: skip
    return 0


def _status(args: argparse.Namespace) -> int:
    from fedgrpc.client.admin import check_health, fetch_status

    config = _client_config(args)
    if args.health:
        try:
            serving = check_health(args.target, config, args.timeout_s)
        except Exception as exc:  # any failure is "unhealthy": exit 1, not 2
            sys.stderr.write(f"fedgrpc status: {exc}\n")
            return 1
        sys.stdout.write(serving + "\n")
        return 0 if serving == "SERVING" else 1
    status = fetch_status(
        args.target, config, args.timeout_s,
        admin_token_file=args.admin_token_file or "",
    )  # fmt: skip
    if args.json:
        sys.stdout.write(json.dumps(dataclasses.asdict(status)) + "\n")
    else:
        sys.stdout.write(format_status(args.target, status))
    return 0


def _export(args: argparse.Namespace) -> int:
    from fedgrpc.coordinator.ops.model_export import ExportFormat, export_model

    wanted = args.format or ("safetensors" if args.out.endswith(".safetensors") else "")
    fmt: ExportFormat = "safetensors" if wanted == "safetensors" else "torch"
    done = export_model(args.checkpoint, args.out, fmt, args.dtype)
    sys.stdout.write(
        f"wrote {done.path} ({fmt}, {args.dtype}, {done.num_tensors} tensors, "
        f"{_size(done.num_bytes)}): model version {done.model_version} after "
        f"round {done.round_id}, from {done.checkpoint}\n"
    )
    return 0


def format_status(target: str, s: CoordinatorStatus) -> str:
    """`fedgrpc status`'s tables: summary lines, clients, recent rounds."""
    lines = [
        f"coordinator {target}  run {s.run_id}  up {_duration(s.uptime_s)}",
        f"round {s.round_id} ({s.phase})  model version {s.model_version}  "
        f"{s.num_parameters:,} parameters  min_clients {s.min_clients}  "
        f"H={s.inner_steps}",
        f"traffic: {_size(s.bytes_received)} in (updates), "
        f"{_size(s.bytes_sent)} out (models)",
        f"divergence guard: {s.norm_guard_trips} round(s) refused, "
        f"{s.norm_guard_history} recent norm(s) (`fedgrpc guard-reset` clears them)",
        _secure_line(s),
        _privacy_line(s),
        _pacing_line(s),
        *([f"NOT SERVING: {s.not_serving_reason}"] if s.not_serving_reason else []),
        "",
        _table(_CLIENT_COLUMNS, [_client_cells(c) for c in s.clients]),
        *_excluded_lines(s),
        "",
        _table(
            _ROUND_COLUMNS
            + (("epsilon",) if s.privacy.mode != "off" else ())
            + (("staleness",) if s.pacing.round_mode == "buffered_async" else ()),
            [
                _round_cells(r) + _epsilon_cell(s, r) + _staleness_cell(s, r)
                for r in s.recent_rounds[-RECENT_ROUNDS_SHOWN:]
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


_CLIENT_COLUMNS = ("client", "name", "connected", "updates", "samples",
                   "last round", "last loss", "trust", "record ε (δ)",
                   "bytes up / down")  # fmt: skip
_ROUND_COLUMNS = ("round", "outcome", "updates", "seconds", "mean loss", "bytes in",
                  "secure", "selected")  # fmt: skip


def _secure_line(s: CoordinatorStatus) -> str:
    if not s.secure_aggregation:
        return "secure aggregation: off"
    return (f"secure aggregation: on  guard trips {s.guard_trips}  "
            f"dense fallback rounds {s.dense_fallback_rounds}")  # fmt: skip


def _pacing_line(s: CoordinatorStatus) -> str:
    """The round mode, its settings, and the goodput of reported compute."""
    p = s.pacing
    settings = {
        "deadline": f" ({p.round_duration_s:g} s of training per round)",
        "buffered_async": f" (K={p.buffer_size}, max_staleness {p.max_staleness})",
        "streaming": f" ({p.fragments} fragments, overlap "
        f"{p.streaming_overlap_steps} steps)",
    }.get(p.round_mode, "")
    goodput = (
        f"  goodput {p.goodput:.1%} of {p.compute_offered_s:,.0f} s client compute"
        if p.compute_offered_s > 0
        else "  goodput: no compute reported yet"
    )
    return f"rounds: {p.round_mode}{settings}{goodput}"


def _privacy_line(s: CoordinatorStatus) -> str:
    """Epsilon spent, the budget left, and the mechanism's S, z and accountant."""
    p = s.privacy
    if p.mode == "off":
        return "privacy: off"
    budget = (
        f" of max {p.max_epsilon:g} ({max(0.0, p.max_epsilon - p.epsilon):.3g} left)"
        if p.max_epsilon > 0
        else " (no max_epsilon)"
    )
    return (f"privacy: {p.mode}  epsilon {p.epsilon:.4g}{budget} at delta "
            f"{p.delta:g}  clip S={p.clip_norm:.4g}  noise z={p.noise_multiplier:.4g}"
            f"  accountant {p.accountant}")  # fmt: skip


def _excluded_lines(s: CoordinatorStatus) -> list[str]:
    """One line per client excluded from the open round, with why."""
    return [
        f"{c.client_id} excluded until round {c.excluded_until_round}: "
        f"{c.exclusion_reason}"
        for c in s.clients
        if c.excluded_until_round > s.round_id
    ]


def _client_cells(c: ClientRow) -> tuple[str, ...]:
    connected = "yes" if c.connected else "no"
    return (c.client_id, c.name, connected, f"{c.updates_accepted:,}",
            f"{c.samples_contributed:,}", str(c.last_round),
            f"{c.last_train_loss:.4f}", _trust_cell(c),
            _record_dp_cell(c),
            f"{_size(c.bytes_received)} / {_size(c.bytes_sent)}")  # fmt: skip


def _record_dp_cell(c: ClientRow) -> str:
    """`2.31 (1e-05)`: the ε(δ) of its record-level DP-SGD, or `-` (none claimed)."""
    if not c.record_dp_delta:
        return "-"
    return f"{c.record_dp_epsilon:.2f} ({c.record_dp_delta:g})"


def _trust_cell(c: ClientRow) -> str:
    """`0.92 trusted`, `0.11 quarantined until round 14`, or `-` (trust off)."""
    if not c.trust_state:
        return "-"
    cell = f"{c.trust_score:.2f} {c.trust_state}"
    if c.trust_state == "quarantined":
        cell += f" until round {c.quarantined_until_round}"
    return cell


def _round_cells(r: RoundRow) -> tuple[str, ...]:
    return (str(r.round_id), r.outcome, str(r.num_updates), f"{r.duration_s:.1f}",
            f"{r.mean_train_loss:.4f}", _size(r.bytes_received),
            _secure_cell(r), " ".join(r.selected) or "all")  # fmt: skip


def _epsilon_cell(s: CoordinatorStatus, r: RoundRow) -> tuple[str, ...]:
    """The run's epsilon after the round (privacy on only); `refused` past budget."""
    if s.privacy.mode == "off":
        return ()
    return (f"{r.privacy_epsilon:.4g}" + (" refused" if r.privacy_exhausted else ""),)


def _staleness_cell(s: CoordinatorStatus, r: RoundRow) -> tuple[str, ...]:
    """buffered_async only: versions the round's stalest update lagged its base."""
    return (str(r.max_staleness),) if s.pacing.round_mode == "buffered_async" else ()


def _secure_cell(r: RoundRow) -> str:
    """`survivors/participants`, the index set's size and any abort reason."""
    if not r.secure:
        return "-"
    cell = f"{r.survivors}/{r.participants} survived, "
    cell += f"{r.positions:,} positions" if r.positions else "dense"
    return cell + (f", {r.secure_abort_reason}" if r.secure_abort_reason else "")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; a dash row when there is nothing."""
    if not rows:
        rows = [tuple("-" for _ in headers)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    )


def _size(num_bytes: int) -> str:
    """Decimal units, as network traffic is usually quoted."""
    if num_bytes < 1000:
        return f"{num_bytes} B"
    value, unit = float(num_bytes), "B"
    for unit in ("KB", "MB", "GB", "TB"):  # noqa: B007 (the last unit is used)
        value /= 1000
        if value < 1000:
            break
    return f"{value:.1f} {unit}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
