"""The `serve` flag table, one tuple per settings section of `CoordinatorConfig`.

Apart from `cli` so the command module keeps to its job (parsers and
handlers). Each tuple mirrors one config section: `CORE_FLAGS`
(`config.coordinator`), `ROUND_MODE_FLAGS` (`config.rounds`),
`ROBUSTNESS_FLAGS` (`config.robustness`, with the
round-stage flags of `cli_flags.STAGE_FLAGS`), `LIMIT_FLAGS`
(`config.limits`), `ACCESS_FLAGS` (`config.access`), `PRIVACY_FLAGS`
(`config.privacy`: client-level DP and the run's budget) and
`DISTRIBUTED_PRIVACY_FLAGS` (`config.privacy`, distributed DP's own keys)
and `TREE_FLAGS` (`config.tree`, a leaf's link to its root); sharding's
`SHARD_FLAGS` live in `cli_shard_flags`, what the coordinator keeps on
disk instead of in RAM in `cli_memory_flags`, secure aggregation's in
`cli_secagg_flags`.
A flag's dest is the config field it sets; tests check every field has one.
"""

from __future__ import annotations

from fedgrpc.cli_flags import STAGE_FLAGS, Flag
from fedgrpc.cli_memory_flags import MEMORY_FLAGS
from fedgrpc.cli_secagg_flags import SECURE_AGGREGATION_FLAGS
from fedgrpc.cli_shard_flags import SHARD_FLAGS
from fedgrpc.config import OUTER_OPTIMIZERS, CoordinatorConfig

_D = CoordinatorConfig()

CORE_FLAGS = (
    Flag("--listen", f"address to bind; port 0 picks a free one (default: "
         f"{_D.listen})", metavar="HOST:PORT"),
    Flag("--ready-file", "write the bound HOST:PORT here (atomically) once "
         "serving", metavar="PATH"),
    Flag("--min-clients", "updates a round needs to be applied "
         f"(default: {_D.min_clients})", int, "N"),
    Flag("--min-client-fraction", "quorum as a fraction of the connected "
         "clients; a round needs max(--min-clients, ceil(F x connected)) "
         f"updates (default: {_D.min_client_fraction:g}, off)", float, "F"),
    Flag("--max-clients", "client records held at once; when full, a new "
         "key replaces the longest-idle client without credit, else Join gets "
         f"RESOURCE_EXHAUSTED (default: {_D.max_clients})", int, "N"),
    Flag("--inner-steps", "inner steps per round announced to clients "
         f"(default: {_D.inner_steps})", int, "H"),
    Flag("--round-timeout-s", "seconds after a round's first update before it "
         "closes with what it has (skipped below --min-clients); updates still "
         f"streaming get as long again (default: {_D.round_timeout_s:g})",
         float, "S"),
    Flag("--outer-optimizer", "outer optimizer applied to the mean "
         "pseudo-gradient: nesterov (DiLoCo: SGD with Nesterov momentum), "
         "fedavg, fedavgm (heavy-ball server momentum), fedadagrad, fedadam, "
         "fedyogi (adaptive per-coordinate steps, Reddi et al. 2021), or "
         "sparseloco (plain SGD; the clients' decaying error-feedback "
         "residual is the momentum; for top-k), or your own "
         "package.module:Class (default: nesterov)", metavar="|".join(
         OUTER_OPTIMIZERS) + "|MODULE:CLASS"),
    Flag("--outer-lr", "outer learning rate (default: 0.7 for nesterov and "
         "fedavgm, 1.0 for fedavg and sparseloco, 0.1 for fedadagrad, 0.01 "
         "for fedadam and fedyogi)", float, "LR"),
    Flag("--outer-momentum", "outer momentum in [0, 1) of nesterov and "
         "fedavgm (default: 0.9 for those, 0 otherwise)", float, "M"),
    Flag("--outer-beta1", "first-moment decay beta1 in [0, 1) of fedadagrad, "
         "fedadam and fedyogi (default: 0.9)", float, "B1"),
    Flag("--outer-beta2", "second-moment decay beta2 in [0, 1) of fedadam and "
         "fedyogi (default: 0.99)", float, "B2"),
    Flag("--outer-tau", "adaptivity tau > 0 of fedadagrad, fedadam and "
         "fedyogi: v starts at tau^2, steps divide by sqrt(v) + tau "
         "(default: 0.001; the paper searches 1e-1 .. 1e-5)", float, "TAU"),
    Flag("--feedback-decay", "clients' error-feedback decay beta in (0, 1] "
         "(default: 0.95 for sparseloco, 1 otherwise)", float, "BETA"),
    Flag("--codec", "update codec: dense[:fp32|bf16|fp16|int8|int4|int2] or "
         "topk:DENSITY[:int8|int4|int2|bf16|fp32], e.g. topk:0.01:int8 "
         f"(default: {_D.codec})", metavar="SPEC"),
    Flag("--downlink-codec", "how new weights reach clients holding the "
         "previous version: dense (the whole model) or a codec spec as for "
         "--codec, e.g. topk:0.01:int8 (the compressed step, with the "
         "coordinator's error feedback; clients stay bit-identical to the "
         f"master) (default: {_D.downlink_codec})", metavar="SPEC"),
    Flag("--chunk-bytes", "payload bytes per streamed chunk, both directions "
         f"(default: {_D.chunk_bytes})", int, "BYTES"),
    Flag("--checkpoint-dir", "write a checkpoint after every applied round "
         "(and at shutdown) here, keeping the newest --checkpoint-keep; resume "
         "from the newest intact one at start (default: none)", metavar="DIR"),
    Flag("--checkpoint-keep", "checkpoints kept in --checkpoint-dir "
         f"(default: {_D.checkpoint_keep})", int, "K"),
    Flag("--checkpoint-retry-max-s", "longest pause between retries of a failed "
         "checkpoint write; until one succeeds the coordinator is NOT_SERVING and "
         f"applies no round (default: {_D.checkpoint_retry_max_s:g})", float, "S"),
    Flag("--metrics-listen", "serve Prometheus metrics at "
         "http://HOST:PORT/metrics, plain HTTP (default: off)",
         metavar="HOST:PORT"),
    Flag("--http-listen", "serve the live dashboard at http://HOST:PORT/ "
         "with /api/v1/status (GetStatus as JSON), /api/v1/events "
         "(server-sent events), /metrics, /healthz and /readyz; plain HTTP. "
         "The dashboard needs --admin-token-file (open HOST:PORT/?token=TOKEN "
         "once) or --admin-access loopback|open (default: off)",
         metavar="HOST:PORT"),
    Flag("--max-rounds", "rounds the run lasts; after the last one closes the "
         "coordinator checkpoints, tells clients the run finished, and exits 0 "
         "once they left (at most --session-timeout-s later) (default: 0, no "
         "limit)", int, "N"),
    Flag("--init-model", "the run's initial weights: a safetensors file "
         "(save_file(dict(model.named_parameters()), PATH)) or a fedgrpc "
         "checkpoint (round-N.ckpt or its directory; weights only); it fixes "
         "the tensors, shapes and dtypes clients must have. Ignored when "
         "--checkpoint-dir has a run to resume", metavar="PATH"),
    Flag("--seed-from-first-client", "let the first client to join upload "
         "the initial weights (and so decide the model); for quick local "
         "runs. Without it or --init-model (or a checkpoint to resume) serve "
         "refuses to start", const=True),
    Flag("--log-format", "log lines on stderr (default: json)",
         choices=("json", "console")),
    Flag("--log-level", "DEBUG, INFO, WARNING or ERROR (default: INFO)",
         metavar="LEVEL"),
)  # fmt: skip
"""Where, when and what the coordinator serves: quorum, rounds, outer step,
codec, secure aggregation, checkpoints, lifecycle, logs."""

ROBUSTNESS_FLAGS = (
    *STAGE_FLAGS,
    Flag("--weighting", "how an update's claimed num_samples weights it in "
         "the mean: capped (the claim, but at most --max-sample-weight-ratio "
         "x the last round's median claim; equal in the first round), "
         "samples (the claim as sent: trusts every client) or equal "
         f"(default: {_D.weighting})", choices=("capped", "samples", "equal")),
    Flag("--max-samples-per-update", "refuse an update claiming more samples "
         "(INVALID_ARGUMENT) (default: "
         f"{_D.max_samples_per_update:_})", int, "N"),
    Flag("--max-sample-weight-ratio", "--weighting capped: an update weighs at "
         "most this many times the last round's median claim "
         f"(default: {_D.max_sample_weight_ratio:g})", float, "R"),
    Flag("--max-update-norm-growth", "divergence guard: skip a round whose mean "
         "update norm is over this many times the median of the last 8 "
         "rounds', 0 disables "
         f"(default: {_D.max_update_norm_growth:g})", float, "X"),
    Flag("--trust", "score each client by how its updates agree with the "
         "round's aggregate and quarantine the ones that keep disagreeing; "
         "spools every update, not with --secure-aggregation (default: "
         f"{_D.trust})", choices=("off", "on")),
    Flag("--trust-decay", "weight of a client's past in its trust score, in "
         "[0, 1): s = decay x s + (1 - decay) x round score "
         f"(default: {_D.trust_decay:g})", float, "D"),
    Flag("--trust-soft-threshold", "below this trust score a client's "
         "aggregation weight is multiplied by score / threshold (soft "
         f"quarantine) (default: {_D.trust_soft_threshold:g})", float, "T"),
    Flag("--trust-hard-threshold", "below this trust score a client is "
         "excluded for --trust-quarantine-rounds rounds (hard quarantine) "
         f"(default: {_D.trust_hard_threshold:g})", float, "T"),
    Flag("--trust-quarantine-rounds", "rounds a first hard quarantine lasts "
         "(doubling for each repeat), and scored rounds of probation after "
         f"readmission (default: {_D.trust_quarantine_rounds})", int, "K"),
    Flag("--guard-norm-floor", "divergence guard: the median it compares with "
         "is at least this fraction of the weights' norm, so near-zero "
         "(hostile) rounds cannot drive it to 0; 0: no floor "
         f"(default: {_D.guard_norm_floor:g})", float, "F"),
    Flag("--max-broken-uploads", "exclude a client whose uploads break (cut, "
         "refused mid-stream, no commit) this often within "
         "--broken-upload-window-rounds, 0 never excludes "
         f"(default: {_D.max_broken_uploads})", int, "N"),
    Flag("--broken-upload-window-rounds", "rounds over which broken uploads "
         f"are counted (default: {_D.broken_upload_window_rounds})", int, "R"),
    Flag("--exclusion-rounds", "rounds a client excluded for broken uploads "
         f"sits out (default: {_D.exclusion_rounds})", int, "R"),
)  # fmt: skip
"""How updates are weighted, combined and guarded (`config.robustness`)."""

LIMIT_FLAGS = (
    Flag("--heartbeat-interval-s", "seconds between client heartbeats, "
         "announced at Join: clients send at least this often "
         f"(default: {_D.heartbeat_interval_s:g})", float, "S"),
    Flag("--session-timeout-s", "evict a client silent this long, even with its "
         "connection open; must exceed --heartbeat-interval-s "
         f"(default: {_D.session_timeout_s:g})", float, "S"),
    Flag("--first-message-timeout-s", "end a Session or PushUpdate stream that "
         "sends no first message (open, header) within S seconds with "
         f"DEADLINE_EXCEEDED (default: {_D.first_message_timeout_s:g})",
         float, "S"),
    Flag("--stream-idle-timeout-s", "end a PushUpdate silent for S seconds "
         "between its header, chunks and commit with DEADLINE_EXCEEDED; the "
         "push is abandoned and the round does not wait for it "
         f"(default: {_D.stream_idle_timeout_s:g})", float, "S"),
    Flag("--pull-timeout-s", "cancel a PullModel not finished S seconds after "
         "its model version was ready (a client that stopped reading), "
         f"releasing the version (default: {_D.pull_timeout_s:g})", float, "S"),
    Flag("--max-streams-per-connection", "Session, PushUpdate and PullModel "
         "streams one connection may hold; more get RESOURCE_EXHAUSTED "
         "(default: 0, half of --max-streams-total)", int, "N"),
    Flag("--max-streams-total", "those streams open on the coordinator; more "
         "get RESOURCE_EXHAUSTED (default: 0, 4 x --max-clients + 64)",
         int, "N"),
    Flag("--metrics-read-timeout-s", "close a metrics connection whose next "
         "read waits longer than S seconds "
         f"(default: {_D.metrics_read_timeout_s:g})", float, "S"),
    Flag("--metrics-max-connections", "metrics connections served at once; "
         "more are closed on accept "
         f"(default: {_D.metrics_max_connections})", int, "N"),
    Flag("--http-read-timeout-s", "close an --http-listen connection whose "
         "next read or write waits longer than S seconds "
         f"(default: {_D.http_read_timeout_s:g})", float, "S"),
    Flag("--http-max-connections", "--http-listen connections served at once; "
         f"more are closed on accept (default: {_D.http_max_connections})",
         int, "N"),
    Flag("--http-max-event-streams", "open /api/v1/events streams (dashboard "
         "tabs); more get 503; below --http-max-connections "
         f"(default: {_D.http_max_event_streams})", int, "N"),
)  # fmt: skip
"""Liveness, deadlines and resource bounds (`config.limits`)."""

ACCESS_FLAGS = (
    Flag("--tls-cert", "PEM certificate chain to serve TLS with; needs "
         "--tls-key (default: plaintext; see `fedgrpc certs`)", metavar="PEM"),
    Flag("--tls-key", "PEM private key of --tls-cert", metavar="PEM"),
    Flag("--tls-client-ca", "PEM CA certificate(s): require client "
         "certificates signed by it (mutual TLS); needs --tls-cert "
         "(default: no client certificates)", metavar="PEM"),
    Flag("--identity-key", "the coordinator's Ed25519 private key (PEM, from "
         "`fedgrpc keygen`): signs every model sent; required with "
         "--allowed-client-keys (default: a throwaway key, open enrollment "
         "only)", metavar="PEM"),
    Flag("--allowed-client-keys", "who may join: a directory of *.pub files, "
         "or a file of PEM public keys and/or 64-hex fingerprints",
         metavar="PATH"),
    Flag("--open-enrollment", "let any client key join (each still proves "
         "it holds its key and signs its updates); for local simulation, "
         "logged as a warning (default: off)", const=True),
    Flag("--update-signatures", "required: verify every update header, "
         "chunk and commit; off: skip it, only with --open-enrollment, to "
         "measure the cost (default: required)", choices=("required", "off")),
    Flag("--update-hash", "hash of update payloads, signature chains and "
         "model digests: blake3 (clients that offer it; older ones use "
         "sha256) or sha256 (every client; BLAKE3 updates refused, for "
         "FIPS-only runs) (default: blake3)", choices=("blake3", "sha256")),
    Flag("--sign-chunks", "auto: clients sign the update header and commit, "
         "chunks carry their digest and chain link (checked on arrival; updates "
         "are staged until the commit verifies), saving an Ed25519 verify per "
         "chunk; always: every chunk too (secure aggregation always does) "
         "(default: auto)", choices=("auto", "always")),
    Flag("--admin-token-file", "file holding the admin token (one line, 16+ "
         "characters; `fedgrpc certs --admin` writes one): AdminService "
         "callers sending `authorization: Bearer <token>` may read status",
         metavar="PATH"),
    Flag("--admin-access", "who may call AdminService (GetStatus): "
         "credential (admin token or an admin client certificate), loopback "
         "(those, or any caller on this host), open (anyone; warned); auto: "
         "credential with --admin-token-file, else loopback (default: auto)",
         choices=("auto", "credential", "loopback", "open")),
    Flag("--reflection", "serve gRPC server reflection, for grpcurl without "
         "the .proto files (default: off)", const=True),
)  # fmt: skip
"""Who may connect, join, and read (`config.access`)."""


def _true_or_false(text: str) -> bool:
    """`true` / `false` (for a switch whose default is on)."""
    if text.lower() not in ("true", "false"):
        raise ValueError(text)
    return text.lower() == "true"


PRIVACY_FLAGS = (
    Flag("--privacy", "client-level differential privacy (DP-FedAvg): off; "
         "central (the coordinator clips every update to --dp-clip-norm and "
         "adds Gaussian noise to the round's sum; it must be trusted; needs "
         "--weighting equal and --aggregator mean); distributed (clients noise "
         "inside secure aggregation) (default: off)",
         choices=("off", "central", "distributed")),
    Flag("--dp-clip-norm", "S: every update is clipped to this L2 norm before "
         "it counts (the sensitivity of the round's sum); required with "
         "--privacy", float, "S"),
    Flag("--dp-noise-multiplier", "z: the noise on the round's sum has "
         "standard deviation z x S; set this or --dp-target-epsilon", float, "Z"),
    Flag("--dp-target-epsilon", "epsilon the run should spend over "
         "--max-rounds rounds at --dp-delta: z is calibrated at start by "
         "dp-accounting (needs --max-rounds); instead of --dp-noise-multiplier",
         float, "EPS"),
    Flag("--dp-delta", "delta of every epsilon reported and of --max-epsilon "
         f"(default: {_D.dp_delta:g})", float, "DELTA"),
    Flag("--max-epsilon", "privacy budget: a round that would take epsilon "
         "past it is not applied, and the run finishes (final checkpoint, "
         "clients told, serve exits 0) (default: 0, no limit; epsilon is "
         "still reported)", float, "EPS"),
    Flag("--dp-accountant", "rdp (Renyi DP, fast) or pld (privacy loss "
         "distributions, tighter; not with --selection random) (default: "
         f"{_D.dp_accountant})", choices=("rdp", "pld")),
    Flag("--dp-adaptive-clip-quantile", "adaptive clipping (Andrew et al. "
         "2021): move S each round toward this quantile of the update norms, "
         "e.g. 0.5; needs --dp-clip-count-noise (default: 0, S fixed)",
         float, "Q"),
    Flag("--dp-clip-learning-rate", "adaptive clipping's geometric step "
         f"size (default: {_D.dp_clip_learning_rate:g})", float, "LR"),
    Flag("--dp-clip-count-noise", "adaptive clipping: noise std (in clients) "
         "on the count of unclipped updates; shares z's budget, must exceed "
         "z / 2 (suggested: clients per round / 20)", float, "SIGMA"),
    Flag("--trusted-coordinator", "false declares this coordinator "
         "untrusted: only --privacy distributed is allowed (default: true)",
         _true_or_false, "true|false"),
)  # fmt: skip
"""Client-level differential privacy and the run's budget (`config.privacy`)."""

DISTRIBUTED_PRIVACY_FLAGS = (
    Flag("--dp-min-survivors", "privacy = distributed: each client's noise "
         "share is sized so that N shares reach the configured noise, and a "
         "masked round with fewer survivors is aborted before its sum is "
         "unmasked (default: 0 = --min-clients, at least 3)", int, "N"),
    Flag("--dp-rounding-beta", "privacy = distributed: beta in [0, 1) of the "
         "clients' conditional randomized rounding (Kairouz et al. 2021); "
         "smaller raises the rounded norm bound and so the noise; 0: the "
         f"deterministic bound (default: {_D.dp_rounding_beta:.4g} = e^-0.5)",
         float, "BETA"),
)  # fmt: skip
"""Distributed DP's own settings (`config.privacy`; the shared privacy flags
such as --privacy and --dp-clip-norm are listed with them)."""

ROUND_MODE_FLAGS = (
    Flag("--round-mode", "how rounds are paced: sync (every client pushes "
         "once per round from its base; the slowest sets the pace), deadline "
         "(rounds of --round-duration-s; each client trains as many steps as "
         "fit and the mean weighs its samples) or buffered_async (FedBuff: a "
         "round closes at --buffer-size updates and takes updates up to "
         "--max-staleness versions old, scaled by staleness) or streaming "
         "(Streaming DiLoCo: each round syncs one of --fragments parameter "
         "ranges, every inner_steps/fragments steps, so a sync moves 1/P of "
         "the model); all but sync refuse --secure-aggregation (default: sync)",
         metavar="sync|deadline|buffered_async|streaming",
         choices=("sync", "deadline", "buffered_async", "streaming")),
    Flag("--round-duration-s", "deadline mode: wall seconds of training per "
         "round, from its start; the round then closes when every connected "
         "client has committed, or --round-timeout-s later with what it has "
         "(required with --round-mode deadline)", float, "S"),
    Flag("--buffer-size", "buffered_async: K, the updates that close a round "
         "(>= --min-clients; default: 0 = --min-clients)", int, "K"),
    Flag("--max-staleness", "buffered_async: versions an update's base may lag "
         "the round's; older ones are refused with FAILED_PRECONDITION "
         f"(0..256; default: {_D.max_staleness})", int, "TAU"),
    Flag("--staleness-exponent", "buffered_async: a in s(tau) = (1+tau)^-a, "
         "the factor a stale update's values are scaled by (0: no discount; "
         f"default: {_D.staleness_exponent:g}, 1/sqrt(1+tau))", float, "A"),
    Flag("--fragments", "streaming: P, the contiguous parameter ranges synced "
         "in turn; inner_steps must be a multiple of it (2..64; default: "
         f"{_D.fragments})", int, "P"),
    Flag("--streaming-overlap-steps", "streaming: tau, inner steps a client "
         "trains while its fragment is in flight before merging it (0: wait; "
         f"< inner_steps/fragments; default: {_D.streaming_overlap_steps})",
         int, "TAU"),
    Flag("--streaming-mix", "streaming: alpha in theta = alpha*local + "
         "(1-alpha)*global when a fragment is merged (0..1; default: "
         f"{_D.streaming_mix:g})", float, "ALPHA"),
)  # fmt: skip
"""Round pacing (`config.rounds`)."""

TREE_FLAGS = (
    Flag("--upstream", "make this coordinator a leaf of the root at "
         "HOST:PORT: it serves its own clients and sends their weighted mean "
         "upward as one update, then serves the root's weights (no initial "
         "model, checkpoints or DP of its own; default: none, a root or flat "
         "coordinator)", metavar="HOST:PORT"),
    Flag("--upstream-identity-key", "the leaf's private key (PEM) when it "
         "joins the root; the root's allowed keys list its public key "
         "(default: a throwaway key)", metavar="PATH"),
    Flag("--upstream-coordinator-key", "the root's public key (PEM file or "
         "fingerprint) the leaf pins (default: trust the key it presents)",
         metavar="KEY"),
    Flag("--upstream-tls-ca", "CA bundle verifying the root's TLS "
         "certificate (default: plain text)", metavar="PATH"),
    Flag("--upstream-timeout-s", "seconds the leaf waits on the root for one "
         "call before it reports it unreachable and skips its round; keep it "
         f"below the clients' rpc_timeout_s (default: {_D.upstream_timeout_s:g})",
         float, "S"),
    Flag("--upstream-round-wait-s", "seconds the leaf waits for the root's "
         "round to open and close (default: "
         f"{_D.upstream_round_wait_s:g})", float, "S"),
)  # fmt: skip
"""Aggregation trees: a leaf's link to its root (`config.tree`)."""

SERVE_FLAGS = (
    *CORE_FLAGS, *SECURE_AGGREGATION_FLAGS, *ROUND_MODE_FLAGS, *ROBUSTNESS_FLAGS,
    *MEMORY_FLAGS, *LIMIT_FLAGS, *ACCESS_FLAGS, *PRIVACY_FLAGS,
    *DISTRIBUTED_PRIVACY_FLAGS, *TREE_FLAGS, *SHARD_FLAGS,
)  # fmt: skip
"""Every `fedgrpc serve` flag, in --help order."""
