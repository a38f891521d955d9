"""A leaf's link to its root: one `Connection`, driven from the apply thread.

The leaf is one client of the root. Its "training" is its group's round:
where a client would push its pseudo-gradient, the leaf pushes its group's
weighted mean as one raw float32 update claiming the group's total weight
as `num_samples` (`rounds.upstream` says why that reproduces the flat
mean). `bootstrap` never blocks the leaf's event loop (it reaches the root
on a thread of its own while Joins are answered UNAVAILABLE); `exchange`
blocks the leaf's apply thread, so the event loop keeps serving its group
(heartbeats, pulls) while the root's round runs.

A root that cannot be reached, or that refuses the update, makes the
leaf's round skip with a reason naming the root: the group's weights stay
as they are (never a half-applied round), and the next round joins the
root again and catches up to its version before pushing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from fedgrpc.client.connection import Connection
from fedgrpc.client.connection.join import Federation, JoinSettings
from fedgrpc.client.connection.push import UpdateMeta
from fedgrpc.client.connection.round_tracker import RunFinished, StaleBase
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.rounds.upstream import RootModel
from fedgrpc.domain.codecs import Dense
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.errors import (
    CoordinatorUnavailableError,
    FedGrpcError,
    IncompatibleClientError,
    ShuttingDownError,
    UpstreamUnavailableError,
    WrongRoundError,
)
from fedgrpc.log import get_logger
from fedgrpc.wire.tensors import flatten_fp32, unpack_native

log = get_logger(__name__)
T = TypeVar("T")
POLL_S = 1.0
"""Slice of a wait on the root's rounds between checks for `close`."""
_UNREACHABLE = (CoordinatorUnavailableError, ShuttingDownError)
"""Errors that mean the root is away (for now), not that it refused the leaf."""


def upstream_client_config(config: CoordinatorConfig) -> ClientConfig:
    """The leaf's client settings towards its root, from the `upstream_*` keys.

    A leaf held to SHA-256 (`update_hash = "sha256"`) offers its root only
    SHA-256, for its updates and the root models' digests alike.
    """
    timeout_s = config.upstream_timeout_s
    fips = config.update_hash == "sha256"
    return ClientConfig(
        hashes=("sha256",) if fips else ("blake3", "sha256"),
        name=f"leaf@{config.listen}",
        rpc_timeout_s=timeout_s,
        connect_timeout_s=timeout_s,
        round_wait_s=config.upstream_round_wait_s,
        tls_ca=config.upstream_tls_ca,
        identity_key=config.upstream_identity_key,
        coordinator_key=config.upstream_coordinator_key,
    )


class RootLink:
    """`Upstream` over the client library (see the module docstring)."""

    def __init__(self, config: CoordinatorConfig) -> None:
        """Nothing is dialled before `bootstrap` (the leaf needs a spec first)."""
        self._target = config.upstream
        self._client_config = upstream_client_config(config)
        self._spec: ModelSpec | None = None
        self._connection: Connection | None = None
        self._federation: Federation | None = None
        self._base_sha256 = b""
        """The root model's digest (under the hash Join agreed with the root)."""
        self._lock = threading.Lock()
        """Serialises the link's use: a bootstrap attempt, exchange, close."""
        self._state = threading.Lock()
        """Guards the bootstrap attempt's outcome; never held across I/O."""
        self._attempt: threading.Thread | None = None
        self._reached: RootModel | None = None
        self._error: FedGrpcError | None = None
        self._retry_at = 0.0
        """Monotonic time before which no new bootstrap attempt starts."""
        self._closed = False
        self._log = log.bind(upstream=self._target)

    @property
    def target(self) -> str:
        """The root's host:port."""
        return self._target

    def bootstrap(self, spec: ModelSpec) -> RootModel:
        """The root's model once reached; else start reaching it, and refuse.

        Never blocks: a Join that waited on the root could outlive its
        caller's deadline, and the caller would see DEADLINE_EXCEEDED instead
        of why. So the first call starts one attempt (join the root with
        `spec`, pull its model) on its own thread and raises at once; clients
        retry UNAVAILABLE, and a later call returns the model the attempt
        pulled (`Upstream.bootstrap`).

        Raises:
            UpstreamUnavailableError: not reached yet, naming the root and
                the last attempt's error (UNAVAILABLE: clients retry).
            FedGrpcError: the root refused the leaf (`_check_root`, an
                unknown key, another model): a permanent refusal.
        """
        with self._state:
            if self._reached is not None:
                return self._reached
            error, idle = self._error, self._attempt is None
            if not idle and self._attempt is not None:
                idle = not self._attempt.is_alive()
            if idle and not self._closed and time.monotonic() >= self._retry_at:
                self._attempt = threading.Thread(
                    target=self._reach, args=(spec,), name="fedgrpc-upstream-join"
                )
                self._attempt.start()
        if error is not None and not isinstance(error, _UNREACHABLE):
            raise error
        detail = f"; last attempt: {error}" if error else " (joining it now)"
        raise UpstreamUnavailableError(
            f"this leaf cannot reach its root at {self._target} yet{detail}"
        )

    def _reach(self, spec: ModelSpec) -> None:
        """One bootstrap attempt (its own thread): join the root, pull its model."""
        try:
            with self._lock:
                try:
                    connection, federation = self._connect(spec)
                    version = federation.model_version
                    reached = self._pull(connection, federation, version)
                except BaseException as exc:
                    self._drop(str(exc))
                    raise
        except FedGrpcError as exc:
            self._log.warning("upstream_unreachable", reason=str(exc))
            self._failed(exc)
            return
        except Exception as exc:  # a bug: logged, and a later Join retries
            self._log.exception("upstream_join_failed")
            self._failed(UpstreamUnavailableError(str(exc)))
            return
        with self._state:
            self._reached, self._error = reached, None

    def _failed(self, error: FedGrpcError) -> None:
        """Remember why the attempt failed; the next waits `upstream_timeout_s`.

        A Join storm must not become a storm of Joins at a root that is down
        or refuses this leaf.
        """
        with self._state:
            self._error = error
            self._retry_at = time.monotonic() + self._client_config.rpc_timeout_s

    def exchange(
        self, mean: torch.Tensor, weight: int, base_version: int
    ) -> RootModel | str:
        """One root round for the group's `mean` (`Upstream.exchange`)."""
        with self._state:
            self._reached = None  # adopted long ago: free its weights
        with self._lock:
            try:
                return self._exchange(mean, weight, base_version)
            except FedGrpcError as exc:
                self._drop(str(exc))
                self._log.warning("upstream_failed", reason=str(exc))
                return f"the root {self._target} failed this round: {exc}"

    def close(self) -> None:
        """Leave the root (idempotent).

        The link is dropped first without the lock: an `exchange` waiting on
        the root's round (up to `upstream_round_wait_s`) then fails at once,
        its round skips, and the leaf's shutdown is not held up by the root.
        """
        with self._state:
            self._closed = True  # no bootstrap attempt starts after this
        connection = self._connection
        if connection is not None:
            connection.drop("leaf shutting down")
        with self._lock:
            self._drop("leaf shutting down")

    def _exchange(
        self, mean: torch.Tensor, weight: int, base_version: int
    ) -> RootModel | str:
        if self._connection is None or self._federation is None:
            if self._spec is None:
                raise WrongRoundError("the leaf never reached its root")
            self._connect(self._spec)  # the last round lost the root: join again
        connection, federation = self._require()
        opened = self._waiting(
            connection, lambda s: connection.wait_round_open(base_version, s)
        )
        if isinstance(opened, RunFinished):
            return f"the root's run finished at version {opened.model_version}"
        if isinstance(opened, StaleBase):  # the root moved on without this group
            self._log.warning("upstream_stale", base=base_version,
                              latest=opened.model_version)  # fmt: skip
            return self._pull(connection, federation, opened.model_version)
        if opened.selected:
            meta = UpdateMeta(
                round_id=opened.round_id,
                base_version=base_version,
                kind="pseudo_gradient",
                num_samples=max(1, weight),
                round_nonce=opened.nonce,
                base_sha256=self._base_sha256,
            )
            try:
                connection.push(meta, mean, federation.chunk_bytes, None)
            except WrongRoundError as exc:  # it closed under us: its outcome decides
                self._log.warning("upstream_push_missed", reason=str(exc))
        ended = self._waiting(
            connection, lambda s: connection.wait_round_closed(opened.round_id, s)
        )
        if ended.outcome != "applied":
            return f"the root skipped its round {ended.round_id}: {ended.reason}"
        return self._pull(connection, federation, ended.model_version)

    def _waiting(self, connection: Connection, wait: Callable[[float], T]) -> T:
        """`wait(s)` in slices of POLL_S up to `upstream_round_wait_s`.

        Between slices `close` is noticed, so a leaf shutting down is never
        held for the root's round (which may take as long as the slowest
        other group). A slice that times out is retried; a broken stream or
        a shutdown the tracker recorded is not.
        """
        deadline = time.monotonic() + self._client_config.round_wait_s
        while True:
            if self._closed:
                raise ShuttingDownError("the leaf is shutting down")
            remaining = deadline - time.monotonic()
            try:
                return wait(max(0.01, min(POLL_S, remaining)))
            except CoordinatorUnavailableError:
                tracker = connection.link.tracker
                ended = tracker.failure is not None or tracker.shutdown_reason
                if ended or remaining <= POLL_S:
                    raise

    def _connect(self, spec: ModelSpec) -> tuple[Connection, Federation]:
        if self._connection is not None and self._federation is not None:
            return self._connection, self._federation
        if self._closed:
            raise ShuttingDownError("the leaf is shutting down")
        connection = Connection(self._target, spec, JoinSettings(), self._client_config)
        try:
            federation = connection.join()
            _check_root(federation, self._target)
        except BaseException:
            connection.close()
            raise
        self._connection, self._federation = connection, federation
        self._spec = federation.model_spec or spec
        self._log.info("upstream_joined", version=federation.model_version,
                       client=connection.client_id)  # fmt: skip
        return connection, federation

    def _pull(
        self, connection: Connection, federation: Federation, version: int
    ) -> RootModel:
        spec = self._spec
        if spec is None:
            raise WrongRoundError("the leaf never reached its root")
        buffer = torch.empty(spec.num_bytes, dtype=torch.uint8)  # fresh: pulls
        wait_s = self._client_config.rpc_timeout_s  # of the old one may still read
        pulled = connection.pull(version, buffer, wait_s, federation.chunk_bytes)
        self._base_sha256 = pulled.sha256
        weights = flatten_fp32(unpack_native(pulled.buffer, spec), spec)
        self._log.info("upstream_model", version=pulled.version)
        return RootModel(weights, pulled.version, spec)

    def _require(self) -> tuple[Connection, Federation]:
        if self._connection is None or self._federation is None:
            raise WrongRoundError("the leaf is not joined to its root")
        return self._connection, self._federation

    def _drop(self, reason: str) -> None:
        connection, self._connection, self._federation = self._connection, None, None
        if connection is not None:
            connection.drop(reason)
            connection.close()


def _check_root(federation: Federation, target: str) -> None:
    """Refuse a root this leaf cannot be a client of, naming the setting.

    Raises:
        IncompatibleClientError: the root asks the leaf to seed it (the root
            owns the initial model), masks its rounds, or wants a codec other
            than dense float32 (a leaf forwards its group's exact mean).
    """
    problem = ""
    if federation.seed_model:
        problem = ("it has no initial model and asked this leaf to seed it: "
                   "start the root with init_model")  # fmt: skip
    elif federation.secure_aggregation:
        problem = "it runs secure aggregation; a root must take plain updates"
    elif federation.codec != Dense(values="fp32"):
        problem = (f"its codec is {federation.codec}; a root must use "
                   "dense:fp32 (leaves forward their group's exact mean)")  # fmt: skip
    elif federation.round_mode != "sync":
        problem = f"its round_mode is {federation.round_mode!r}; a root runs sync"
    if problem:
        raise IncompatibleClientError(
            f"the root {target} cannot take this leaf: {problem}"
        )
