"""`ClientConfig`: the knobs of `DiLoCoClient`, frozen and validated.

Its own module of the `fedgrpc.config` package (which re-exports it): the
client's options are a different audience's from the coordinator's; both
validate TLS pairs and paths through `fedgrpc.config.files`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

if TYPE_CHECKING:
    import torch

from fedgrpc.config.files import check_readable as _check_readable
from fedgrpc.config.files import check_tls_pair as _check_tls_pair
from fedgrpc.config.files import is_hex as _is_hex
from fedgrpc.config.proxy import check_proxy as _check_proxy
from fedgrpc.errors import check_config as _check

_FINGERPRINT_CHARS = 64
Federate: TypeAlias = (
    'Literal["trainable", "all"] | Callable[[str, torch.Tensor], bool]'
)
"""Which parameters travel: trainable ones, all, or those a function picks."""
BufferSharing = Literal["average", "local"]
FEDERATE_CHOICES = ("trainable", "all")
BUFFER_CHOICES = ("average", "local")
HASH_CHOICES = ("blake3", "sha256")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Knobs of `DiLoCoClient` beyond the target, the model and H."""

    name: str = ""
    """Shown in coordinator logs and `fedgrpc status`; defaults to host:pid."""
    rpc_timeout_s: float = 30.0
    """Deadline of a unary call (Join) and of each chunk of a transfer."""
    round_wait_s: float = 3600.0
    """How long `step()` waits at a sync point for the round to close."""
    heartbeat_interval_s: float = 5.0
    """Seconds between heartbeats on the Session stream, at most: a coordinator
    that expects them more often (RoundConfig.heartbeat_interval_s) gets
    them at its interval."""
    connect_timeout_s: float = 60.0
    """How long the first connection may take before the client gives up."""
    reconnect_initial_s: float = 0.5
    """First pause between reconnect attempts after the coordinator was lost
    (channel gone, UNAVAILABLE, restart); each failed attempt doubles it, with
    jitter (a random 50-100 % of it) so restarted coordinators are not hit by
    every client at once."""
    reconnect_max_s: float = 30.0
    """Cap on one pause between reconnect attempts, and on how long one sync
    point keeps retrying before `step()` returns and training goes on locally
    (the next sync point retries again)."""
    reconnect_give_up_s: float = 3600.0
    """How long the coordinator may stay away in total, since it was lost,
    before `step()` raises `CoordinatorUnavailableError`."""
    proxy: str = ""
    """How to reach the coordinator through an HTTP CONNECT proxy (a client
    behind a firewall that only lets traffic out through one).
    "" (the default): gRPC's environment variables decide, `grpc_proxy`,
    else `https_proxy`, else `http_proxy`, with the hosts in `no_grpc_proxy`
    (else `no_proxy`) reached directly. "http://[user:password@]host:port":
    this proxy, whatever the environment says (the channel option
    `grpc.http_proxy`); the hosts in `no_grpc_proxy` / `no_proxy` still
    bypass it. "direct": no proxy, even if the environment names one. TLS
    to the coordinator runs inside the tunnel, so the proxy sees only the
    coordinator's host and port (`fedgrpc.config.proxy`)."""
    tls_ca: str = ""
    """PEM CA certificate(s) the coordinator's certificate must chain to; set,
    the client speaks TLS ("" : plaintext). For a publicly trusted certificate
    name the system bundle, e.g. /etc/ssl/certs/ca-certificates.crt."""
    tls_cert: str = ""
    """PEM client certificate for mutual TLS (needs `tls_key` and `tls_ca`)."""
    tls_key: str = ""
    """PEM private key of `tls_cert` (unencrypted; keep the file 0600)."""
    identity_key: str = ""
    """This client's Ed25519 private key (PEM, `fedgrpc keygen`); the
    coordinator must list its public half. "" uses a throwaway key, which
    only an `open_enrollment` coordinator accepts."""
    coordinator_key: str = ""
    """The coordinator's public key to insist on: its 64-hex fingerprint or a
    PEM .pub file. "" trusts the key the coordinator presents at Join (logged
    as `coordinator_key_trusted`) and verifies every model against it."""
    export_updates_dir: str = ""
    """Write each update this client pushes, exactly as sent, to a file here
    (`<run>-r<round>-<client>.fedupdate`) for audit with `fedgrpc verify`;
    "" writes nothing. Costs a disk write of every update."""
    hashes: tuple[str, ...] = ("blake3", "sha256")
    """Hashes this client offers at Join, preferred first: the coordinator
    picks one (RoundConfig.update_hash) for its updates' digests and chain
    and for the digests of the models it pulls. ("sha256",) for a client held
    to FIPS algorithms: it then hashes only with SHA-256 and refuses a model
    whose digest is under another hash."""
    proximal_mu: float = 0.0
    """FedProx strength μ (Li et al. 2020, eq. 2): local training minimises
    the user's loss + μ/2 · ‖w - w_global‖², by adding μ · (w - w_global) to
    each parameter's gradient at every optimizer step (`client.proximal`).
    0 (the default) is plain DiLoCo and leaves gradients untouched; try
    0.001-1 on heterogeneous data (larger keeps clients closer to the
    global model)."""

    max_update_norm: float = 0.0
    """Clip each pseudo-gradient this client sends to this L2 norm (0: off).
    With a codec's error feedback the bound applies to Δ plus the carried
    residual, and what is clipped off is dropped, not carried. The one
    per-client bound that works under secure aggregation (the coordinator
    then sees only sums); elsewhere the coordinator can also bound updates
    itself (`norm_bound`). Pick it above the norms honest clients send (a
    client logs `update_clipped` with the norm it had): too low slows training."""
    min_dp_noise_multiplier: float = 0.0
    """Distributed DP (a coordinator with privacy = "distributed"): take part
    only in masked rounds whose announced noise gives the unmasked sum at
    least this Gaussian noise multiplier z, checked twice: at the setup (a
    round announced without noise is refused) and, with the survivors
    known, before revealing the shares that unmask it. Protects against a
    coordinator that announces less noise than it promised. 0: no check."""

    federate: Federate = "trainable"
    """Which parameters travel. "trainable" (the default): those with
    requires_grad, so a frozen backbone or a LoRA base model costs nothing;
    "all": every parameter; or a function (name, tensor) -> bool. Every
    client of a federation must choose the same (Join names the first tensor
    that differs)."""
    buffers: BufferSharing = "average"
    """Module buffers (BatchNorm running statistics): "average" (the default)
    sends float buffers with the parameters and the coordinator sets them to
    the clients' weighted mean (never an outer optimizer step); "local"
    keeps each client's own. Integer buffers (`num_batches_tracked`) are
    counters: they are in the federation's model, so exports load strictly,
    but each client keeps counting its own batches. Non-persistent buffers
    and ones neither float nor int64/int32 stay local."""
    local_modules: tuple[str, ...] = ()
    """Module names (as in `model.named_modules()`, e.g. "head") whose
    parameters and buffers never leave this client: personalisation, such as
    a per-client classifier head. Every client must name the same ones."""

    def __post_init__(self) -> None:
        _check(callable(self.federate) or self.federate in FEDERATE_CHOICES,
               "federate", self.federate,
               "'trainable', 'all' or a function (name, tensor) -> bool")  # fmt: skip
        _check(self.buffers in BUFFER_CHOICES, "buffers", self.buffers,
               "'average' or 'local'")  # fmt: skip
        _check(isinstance(self.hashes, tuple) and "sha256" in self.hashes
               and set(self.hashes) <= set(HASH_CHOICES), "hashes", self.hashes,
               "a tuple of 'blake3' and 'sha256' that includes 'sha256' (every "
               "coordinator speaks it), e.g. ('sha256',)")  # fmt: skip
        _check(isinstance(self.local_modules, tuple)
               and all(isinstance(m, str) and m.strip(".") for m in self.local_modules),
               "local_modules", self.local_modules,
               "a tuple of module names, e.g. ('head',)")  # fmt: skip
        for name in ("rpc_timeout_s", "round_wait_s", "heartbeat_interval_s",
                     "connect_timeout_s", "reconnect_initial_s",
                     "reconnect_max_s", "reconnect_give_up_s"):  # fmt: skip
            value = getattr(self, name)
            _check(value > 0, name, value, "> 0")
        _check(self.reconnect_max_s >= self.reconnect_initial_s, "reconnect_max_s",
               self.reconnect_max_s, f">= reconnect_initial_s="
               f"{self.reconnect_initial_s}")  # fmt: skip
        mu = self.proximal_mu
        number = isinstance(mu, int | float) and not isinstance(mu, bool)
        _check(
            number and math.isfinite(mu) and mu >= 0,
            "proximal_mu",
            mu,
            "a finite number >= 0 (0 turns FedProx off)",
        )
        bound = self.max_update_norm
        _check(
            isinstance(bound, int | float) and not isinstance(bound, bool)
            and math.isfinite(bound) and bound >= 0,
            "max_update_norm", bound, "a finite number >= 0 (0 turns it off)",
        )  # fmt: skip
        floor = self.min_dp_noise_multiplier
        _check(math.isfinite(floor) and floor >= 0, "min_dp_noise_multiplier",
               floor, "a finite number >= 0 (0 turns the check off)")  # fmt: skip
        _check_proxy(self.proxy)
        _check_tls_pair(self.tls_cert, self.tls_key)
        _check(not self.tls_cert or bool(self.tls_ca), "tls_ca", self.tls_ca,
               "the CA file that signed the coordinator's certificate, since "
               "tls_cert is set")  # fmt: skip
        _check_readable(tls_ca=self.tls_ca, tls_cert=self.tls_cert,
                        tls_key=self.tls_key,
                        identity_key=self.identity_key)  # fmt: skip
        pin = self.coordinator_key
        if pin and not (len(pin) == _FINGERPRINT_CHARS and _is_hex(pin)):
            _check_readable(coordinator_key=pin)
