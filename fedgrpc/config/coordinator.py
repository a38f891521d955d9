"""`CoordinatorConfig`: everything `fedgrpc serve` and `fedgrpc.Coordinator` need.

Precedence everywhere: CLI flag, then TOML, then the default documented here.
Each field's docstring states its unit and why the default is what it is;
`fedgrpc serve --help` and server/coordinator.example.toml repeat them. The
outer optimizer's names, defaults and rules live in `config.outer` (one
table per optimizer family), shared file checks and TOML loading in
`config.files`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from fedgrpc.config import outer
from fedgrpc.config.access import AccessSettings
from fedgrpc.config.files import load_table
from fedgrpc.config.http import HttpSettings
from fedgrpc.config.limits import LimitSettings
from fedgrpc.config.outer import OuterOptimizerName
from fedgrpc.config.privacy import PrivacySettings
from fedgrpc.config.robustness import RobustnessSettings
from fedgrpc.config.rounds import RoundModeSettings
from fedgrpc.config.secure import SecureAggregationSettings
from fedgrpc.config.shards import ShardSettings
from fedgrpc.config.tree import LEAF_AGGREGATORS, TreeSettings
from fedgrpc.domain.chunks import (
    DEFAULT_CHUNK_BYTES,
    MAX_CHUNK_BYTES,
    MESSAGE_OVERHEAD_BYTES,
    MIN_CHUNK_BYTES,
)
from fedgrpc.domain.codecs import CodecConfig, Dense, parse_codec
from fedgrpc.errors import ConfigError
from fedgrpc.errors import check_config as _check


@dataclass(frozen=True, slots=True, kw_only=True)
class CoordinatorConfig(
    RobustnessSettings,
    LimitSettings,
    AccessSettings,
    PrivacySettings,
    RoundModeSettings,
    HttpSettings,
    TreeSettings,
    ShardSettings,
    SecureAggregationSettings,
):
    """Everything `fedgrpc serve` needs; one TOML table `[coordinator]`.

    One flat set of fields (TOML keys and `--flags` alike); the sections it
    inherits keep their own fields and checks in their own modules.
    """

    listen: str = "127.0.0.1:7070"
    """host:port to bind. Port 0 picks a free port (see `ready_file`)."""
    min_clients: int = 2
    """Updates a round needs before it is applied; also the quorum to start one."""
    min_client_fraction: float = 0.0
    """Quorum as a fraction (0-1) of the clients connected when a round
    closes (plus any that pushed and left): a round needs
    max(min_clients, ceil(fraction x those)) updates to be applied, so a
    federation that grows keeps rounds representative; 0 disables."""
    max_clients: int = 1024
    """Client records held at once. When full, a new key takes the place of
    the longest-idle client without standing (disconnected, no accepted
    update; `rounds.registry`); with none, Join is RESOURCE_EXHAUSTED."""
    inner_steps: int = 500
    """H: inner optimizer steps per round, announced to clients (DiLoCo uses 500)."""
    round_timeout_s: float = 600.0
    """Seconds after a round's first update before it closes with what it has
    (skipped below quorum); updates still streaming then get as long again."""
    outer_optimizer: OuterOptimizerName | str = "nesterov"
    """`nesterov` (DiLoCo outer SGD with Nesterov momentum), `fedavg`,
    `fedavgm` (heavy-ball server momentum, Hsu et al. 2019), `fedadagrad`,
    `fedadam`, `fedyogi` (Reddi et al. 2021, Algorithm 2), `sparseloco`
    (plain SGD; the clients' decaying residual is the momentum), or your own
    `package.module:Class` (built with `outer_optimizer_params`)."""
    outer_lr: float | None = None
    """Outer learning rate η; None means 0.7 for nesterov (DiLoCo) and fedavgm,
    1.0 for fedavg and sparseloco, 0.1 for fedadagrad, 0.01 for fedadam and
    fedyogi (their step is ~η per coordinate)."""
    outer_momentum: float | None = None
    """Outer momentum β in [0, 1) of nesterov and fedavgm; None means 0.9
    (DiLoCo); 0 for the others (the adaptive family's momentum is beta1)."""
    outer_beta1: float | None = None
    """β1 in [0, 1), first-moment decay of fedadagrad, fedadam, fedyogi;
    None means 0.9 (Reddi et al. 2021). Only with those optimizers."""
    outer_beta2: float | None = None
    """β2 in [0, 1), second-moment decay of fedadam and fedyogi; None means
    0.99 (Reddi et al. 2021). Only with those optimizers."""
    outer_tau: float | None = None
    """τ > 0, the adaptivity of fedadagrad, fedadam, fedyogi: v starts at τ²
    and steps divide by √v + τ; None means 1e-3 (the paper searches 1e-1 ..
    1e-5). Only with those optimizers."""
    # -- round stages (fedgrpc.coordinator.strategy; DESIGN.md "round pipeline");
    # the aggregator's settings are in config.robustness
    outer_optimizer_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of a `module:Class` outer optimizer's constructor."""
    selection: str = "all"
    """Who takes part in a round: `all` connected clients, or clients_per_round
    of them chosen from the round nonce: `random`, `loss` (power-of-choice,
    favours high loss) or `throughput` (fast uploaders). The others keep
    training; their next update spans the rounds they sat out."""
    clients_per_round: int | None = None
    """k for selection random/loss/throughput (>= min_clients); None with all."""
    # -- end of round stages
    feedback_decay: float | None = None
    """Clients' error-feedback decay beta (e = beta*e + delta); None means 0.95
    for sparseloco (the residual is its momentum), 1.0 otherwise."""
    codec: str = "dense:fp32"
    """Update codec every client must use: `dense[:fp32|bf16|fp16|int8|int4|int2]` or
    `topk:DENSITY[:int8|int4|int2|bf16|fp32]` (e.g. `topk:0.01:int8`); see
    `fedgrpc.compress.parse_codec`."""
    downlink_codec: str = "dense"
    """How new weights travel to clients that hold the previous version: `dense`
    (or `dense:fp32`): the whole model every pull, as before this setting;
    any other codec spec (e.g. `topk:0.01:int8`): the compressed step, with
    the coordinator's own error feedback so clients stay bit-identical to the
    master (`coordinator.rounds.downlink`). Only for all-float32 models (any
    other falls back to whole pulls, with a warning) and not with
    round_mode = "streaming" (its range pulls carry weights)."""
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    """Payload bytes per chunk, both directions; ~1 MiB is loopback's sweet spot."""
    checkpoint_dir: str = ""
    """Directory for `round-<N>.ckpt` checkpoints, written after every applied
    round and at shutdown; `fedgrpc serve` resumes from the newest intact one.
    "" keeps no checkpoints (a restart starts a new run)."""
    checkpoint_keep: int = 3
    """Newest checkpoints kept (>= 1); more than one survives a corrupt file."""
    checkpoint_retry_max_s: float = 30.0
    """Longest pause between retries of a failed checkpoint write (> 0). A
    version is served only once its checkpoint is on disk: after a failed
    write the coordinator reports NOT_SERVING, applies no round and retries
    1 s later, then twice as long each time up to this."""
    metrics_listen: str = ""
    """host:port of the Prometheus /metrics endpoint (e.g. 127.0.0.1:9464);
    "" serves none. Plain HTTP: bind it to a private interface."""
    ready_file: str | None = None
    """Write the bound host:port here once serving (atomic), for scripts and tests."""
    log_format: Literal["json", "console"] = "json"
    """Log output of `fedgrpc serve`: JSON lines (default) or console text."""
    log_level: str = "INFO"
    """Minimum log level."""
    # -- a run's lifecycle (issue 12) ---------------------------------------------
    max_rounds: int = 0
    """Rounds the run lasts (closed rounds, applied or skipped); after round
    `max_rounds` closes the coordinator writes its final checkpoint, tells
    clients the run finished, and `fedgrpc serve` exits 0 once they left
    (at most `session_timeout_s` later). 0: no limit, run until stopped."""
    init_model: str = ""
    """The run's initial weights: a safetensors file (by parameter name) or a
    fedgrpc checkpoint (a `round-<N>.ckpt`, or a directory for its newest;
    weights only, the run is new). The file decides the tensors, shapes and
    dtypes; a client whose model differs is refused at Join
    (`ModelMismatchError`). Ignored when `checkpoint_dir` has a run to resume."""
    seed_from_first_client: bool = False
    """Let the first client to join upload the initial weights (and so decide
    the model) instead of `init_model`: the old behaviour, for quick local
    runs. Without either (and no checkpoint to resume) the coordinator
    refuses to start."""

    def __post_init__(self) -> None:
        _check(":" in self.listen, "listen", self.listen, "host:port")
        _check(0.0 <= self.min_client_fraction <= 1.0, "min_client_fraction",
               self.min_client_fraction, "0..1")  # fmt: skip
        _check(1 <= self.min_clients <= self.max_clients, "min_clients",
               self.min_clients, f"1..max_clients ({self.max_clients})")  # fmt: skip
        _check(self.inner_steps >= 1, "inner_steps", self.inner_steps, ">= 1")
        _check(self.round_timeout_s > 0, "round_timeout_s", self.round_timeout_s, "> 0")
        _check(
            self.max_rounds >= 0, "max_rounds", self.max_rounds, ">= 0 (0: no limit)"
        )
        self._check_outer()
        self._check_round_mode(
            self.secure_aggregation, self.min_clients, self.inner_steps
        )
        self._check_robustness()
        self._check_limits()
        self._check_privacy()
        self._check_distributed_privacy(self.secure_aggregation, self.max_clients)
        _check(not (self.init_model and self.seed_from_first_client),
               "seed_from_first_client", self.seed_from_first_client,
               "false when init_model is set (the initial weights come from one "
               "place)")  # fmt: skip
        # A file, or a checkpoint directory: only that it exists here;
        # `coordinator.ops.init_model_file` reads and checks it at start.
        _check(not self.init_model or Path(self.init_model).exists(), "init_model",
               self.init_model, "an existing safetensors file or fedgrpc "
               "checkpoint (file or directory)")  # fmt: skip
        parse_codec(self.codec)  # raises ConfigError naming the problem
        self._check_downlink()
        _check(0 < self.resolved_feedback_decay <= 1, "feedback_decay",
               self.feedback_decay, "in (0, 1]")  # fmt: skip
        _check(MIN_CHUNK_BYTES <= self.chunk_bytes <= MAX_CHUNK_BYTES, "chunk_bytes",
               self.chunk_bytes, f"{MIN_CHUNK_BYTES}..{MAX_CHUNK_BYTES}")  # fmt: skip
        _check(self.log_format in ("json", "console"), "log_format", self.log_format,
               "json or console")  # fmt: skip
        self._check_access()
        self._check_http(self.admin_token_file, self.admin_access)
        self._check_secure_aggregation(
            (self.codec, self.codec_config), self.min_clients, self.privacy
        )
        _check(self.checkpoint_keep >= 1, "checkpoint_keep", self.checkpoint_keep,
               ">= 1")  # fmt: skip
        _check(self.checkpoint_retry_max_s > 0, "checkpoint_retry_max_s",
               self.checkpoint_retry_max_s, "> 0")  # fmt: skip
        _check(not self.metrics_listen or ":" in self.metrics_listen,
               "metrics_listen", self.metrics_listen, "host:port or empty")  # fmt: skip
        self._check_tree(self.listen, {
            "privacy": self.privacy != "off", "init_model": bool(self.init_model),
            "seed_from_first_client": self.seed_from_first_client,
            "checkpoint_dir": bool(self.checkpoint_dir),
            "aggregator": self.aggregator not in LEAF_AGGREGATORS,
            "round_mode": self.round_mode != "sync",
        })  # fmt: skip
        self._check_shards({
            "secagg_density": self.secure_aggregation and self.secagg_density < 1,
            "round_mode": self.round_mode != "sync",
            "downlink_codec": self.downlink_codec_config is not None,
            "privacy": self.privacy != "off",
            "aggregator": self.aggregator not in LEAF_AGGREGATORS,
            "upstream": bool(self.upstream),
            "selection": self.selection != "all",
        }, tls=(bool(self.tls_cert), bool(self.tls_client_ca)))  # fmt: skip

    def _check_downlink(self) -> None:
        """A codec spec, and no compressed steps where range pulls need weights."""
        try:
            parse_codec(self.downlink_codec)
        except ConfigError as exc:
            raise ConfigError(
                f"downlink_codec={self.downlink_codec!r} is invalid: {exc}"
            ) from None
        _check(self.downlink_codec_config is None or self.round_mode != "streaming",
               "downlink_codec", self.downlink_codec, "dense with round_mode = "
               "'streaming' (its fragments travel as ranges of weights, not as "
               "compressed steps)")  # fmt: skip

    def _check_outer(self) -> None:
        """The optimizer's name, its rates, and only the settings it reads."""
        outer.check_settings(
            self.outer_optimizer,
            params=self.outer_optimizer_params,
            lr=self.resolved_outer_lr,
            momentum=self.outer_momentum,
            resolved_momentum=self.resolved_outer_momentum,
            beta1=self.outer_beta1,
            beta2=self.outer_beta2,
            tau=self.outer_tau,
        )

    @property
    def chunk_signatures_required(self) -> bool:
        """Whether every chunk must be signed, not only the header and commit.

        `sign_chunks = "always"`, or secure aggregation, whose masked chunks
        go straight into the round's ring.
        """
        return self.sign_chunks == "always" or self.secure_aggregation

    @property
    def resolved_outer_lr(self) -> float:
        """The outer learning rate in force (default filled in per optimizer)."""
        return outer.resolve_lr(self.outer_optimizer, self.outer_lr)

    @property
    def resolved_outer_momentum(self) -> float:
        """The outer momentum in force (default filled in per optimizer)."""
        return outer.resolve_momentum(self.outer_optimizer, self.outer_momentum)

    @property
    def resolved_outer_beta1(self) -> float:
        """β1 in force (read by the adaptive family only)."""
        return outer.DEFAULT_BETA1 if self.outer_beta1 is None else self.outer_beta1

    @property
    def resolved_outer_beta2(self) -> float:
        """β2 in force (read by fedadam and fedyogi only)."""
        return outer.DEFAULT_BETA2 if self.outer_beta2 is None else self.outer_beta2

    @property
    def resolved_outer_tau(self) -> float:
        """τ in force (read by the adaptive family only)."""
        return outer.DEFAULT_TAU if self.outer_tau is None else self.outer_tau

    @property
    def resolved_feedback_decay(self) -> float:
        """The error-feedback decay in force (default filled in per optimizer)."""
        return outer.resolve_feedback_decay(self.outer_optimizer, self.feedback_decay)

    @property
    def resolved_buffer_size(self) -> int:
        """buffered_async's K in force: `buffer_size`, or `min_clients` when 0."""
        return self.buffer_size or self.min_clients

    @property
    def codec_config(self) -> CodecConfig:
        """The parsed `codec`."""
        return parse_codec(self.codec)

    @property
    def downlink_codec_config(self) -> CodecConfig | None:
        """The parsed `downlink_codec`; None when pulls carry the whole model."""
        config = parse_codec(self.downlink_codec)
        return None if config == Dense() else config

    @property
    def max_message_bytes(self) -> int:
        """Largest gRPC message accepted: one chunk plus framing."""
        return self.chunk_bytes + MESSAGE_OVERHEAD_BYTES

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> Self:
        """Load the `[coordinator]` table of `path`; non-None `overrides` win."""
        table = load_table(path, "coordinator", cls)
        table.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**table)

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes` applied (None values are ignored) and re-validated."""
        return dataclasses.replace(
            self, **{k: v for k, v in changes.items() if v is not None}
        )
