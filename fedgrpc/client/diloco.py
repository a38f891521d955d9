"""`DiLoCoClient`: the synchronous object a user's training loop calls.

It joins the federation, then counts inner steps and hands every H-th one
to `sync.SyncPoint` (the outer step's order of waits, pushes and pulls),
through `reconnect.Reconnector` (riding out faults). All gRPC work happens
behind `connection.Connection`, the one sync/async boundary. Secure
aggregation is a mode it holds when Join announces it (`secure.SecureMode`).

Memory on top of the model, all CPU and allocated once (`weights.LocalRun`):
two model-sized float32 buffers (the global snapshot and the pseudo-gradient,
8 bytes per parameter) and one uint8 buffer of the model's native bytes.
"""

from __future__ import annotations

import weakref
from types import TracebackType
from typing import Self

import torch

from fedgrpc.client.connection import Connection
from fedgrpc.client.connection.join import Federation, JoinSettings
from fedgrpc.client.connection.link import CoordinatorLink
from fedgrpc.client.connection.session import SessionEvents
from fedgrpc.client.evaluation import EvaluateFn, GlobalEval, GlobalEvaluation
from fedgrpc.client.lifecycle import leave, weak_attach
from fedgrpc.client.reconnect import Reconnector
from fedgrpc.client.secure import SecureMode
from fedgrpc.client.sharded import ShardedSync, build_sync, whole_encoder
from fedgrpc.client.streaming import StreamingSync
from fedgrpc.client.sync import SyncOutcome, SyncPoint
from fedgrpc.client.transform import UpdateTransform
from fedgrpc.client.weights import LocalRun
from fedgrpc.compress import CodecConfig
from fedgrpc.config import ClientConfig
from fedgrpc.errors import ConfigError, IncompatibleClientError
from fedgrpc.log import get_logger
from fedgrpc.privacy.record import RecordDP, unwrap_module

log = get_logger(__name__)


class DiLoCoClient:
    """One federated DiLoCo worker around an existing PyTorch training loop.

    Usage::

        with DiLoCoClient("coord:7070", model) as client:
            for batch in loader:
                loss = loss_fn(model(batch)); loss.backward()
                opt.step(); opt.zero_grad()
                client.step(loss)

    The constructor joins the federation and loads the global weights into
    `model` in place, so every client starts from the same point. Then every
    H-th `step()` runs one outer step and blocks until the new global weights
    are loaded. The inner optimizer's state is the caller's business.

    Thread safety: call every method from one thread (the training loop).
    All gRPC objects live on a private background thread.
    """

    def __init__(
        self,
        target: str,
        model: torch.nn.Module,
        inner_steps: int | None = None,
        *,
        compression: CodecConfig | None = None,
        config: ClientConfig | None = None,
        update_transform: UpdateTransform | None = None,
        record_dp: RecordDP | None = None,
        evaluate: EvaluateFn | None = None,
    ) -> None:
        """Join the coordinator at `target` ("host:port") and load its weights.

        Args:
            target: Coordinator address.
            model: The model to federate; its parameters are overwritten in
                place (dtype and device kept) at join and after each round.
            inner_steps: H. None follows the coordinator; a number must
                match the coordinator's or Join fails.
            compression: How updates are sent, e.g. `fedgrpc.TopK(density=0.01,
                bits=8)` or `fedgrpc.Dense(values="bf16")`. None follows the
                coordinator; a codec must match the coordinator's or Join
                fails. Lossy codecs keep what they did not send in an
                error-feedback residual (one more model-sized fp32 buffer).
            config: Timeouts, heartbeat interval, the name shown in logs, the
                identity key this client signs with (`identity_key`; default a
                throwaway key, which only an open-enrollment coordinator
                admits), the coordinator key to insist on, TLS, and
                FedProx (`proximal_mu`).
            update_transform: For simulation and research only: called with
                each pseudo-gradient before it is encoded and signed, it may
                rewrite it (`fedgrpc.client.transform`; `fedgrpc simulate
                --attack` builds Byzantine clients with it). None: honest.
            record_dp: The `fedgrpc.privacy.RecordDP` that made this loop's
                optimizer private (DP-SGD through Opacus): its ε(δ), composed
                over every step so far, goes into each signed update header
                (status and metrics show it). None: no record-level DP claim.
                An Opacus `GradSampleModule` passed as `model` is unwrapped
                either way: the federation sees the module's own parameters.
            evaluate: Called as `evaluate(model, model_version)` each time a
                new global version is loaded (after Join and after every
                sync point that brought one), while `model` holds the global
                weights, in eval mode under `torch.no_grad()` (the training
                mode is restored). Return a float or a dict of floats to
                have it logged (`global_model_evaluated`) and kept in
                `eval_history`; None records nothing. A "loss" (or
                "val_loss") goes to the coordinator with the next update.

        Raises:
            ConfigError: the model has non-float parameters, nothing to
                federate, a `local_modules` entry matching nothing, or
                inner_steps < 1.
            CoordinatorUnavailableError: not reachable within connect_timeout_s.
            UnknownClientError: the coordinator does not admit this client's key.
            UntrustedCoordinatorError: its key is not `config.coordinator_key`.
            IncompatibleClientError: inner_steps or codec do not fit the run.
            InvalidUpdateError: the model differs from the federation's.
        """
        if inner_steps is not None and inner_steps < 1:
            raise ConfigError(f"inner_steps={inner_steps!r} is invalid: expected >= 1")
        self._config = config or ClientConfig()
        self._record_dp = record_dp
        self._local = LocalRun(unwrap_module(model), self._config)
        self._evaluation = (
            None if evaluate is None else GlobalEvaluation(self._local.model, evaluate)
        )
        self._steps = self._rounds_completed = 0
        self._last_outcome: SyncOutcome | None = None
        self._closed = False
        self._secure: SecureMode | None = None
        """Secure aggregation, held once a Join announced it."""
        self._update_transform = update_transform
        self._settings = JoinSettings(
            inner_steps, compression, self._local.frozen_sha256
        )
        try:
            self._connection = Connection(
                target,
                self._local.spec,
                self._settings,
                self._config,
                attach=weak_attach(weakref.ref(self)),
            )
        except BaseException:
            self._local.close()  # the FedProx hook must not outlive a failed start
            raise
        # A client dropped without close() (re-created in a notebook cell, or
        # replaced in a loop) would heartbeat forever on its thread and every
        # round would wait round_timeout_s for it: leave when collected too.
        # The finalizer holds the connection and the local run, never `self`.
        self._leave_once = weakref.finalize(self, leave, self._connection, self._local)
        try:
            federation = self._connection.join()
            self._sync = self._start(federation)
            self._reconnector = Reconnector(target, self._config)
            self._evaluate_global()
        except BaseException:
            self.close()
            raise

    def _attach(
        self, link: CoordinatorLink, federation: Federation
    ) -> SessionEvents | None:
        """Each link's round mode (`connection.link.Attach`); runs on the loop.

        The first Join that announces secure aggregation creates the mode,
        which then outlives reconnects (its residual must).
        """
        if self._secure is None:
            if not federation.secure_aggregation:
                return None
            wait_s = self._config.rpc_timeout_s
            n = self._local.spec.num_coordinates
            self._secure = SecureMode(
                federation, n, wait_s, self._config.max_update_norm,
                min_noise_multiplier=self._config.min_dp_noise_multiplier,
            )  # fmt: skip
        return self._secure.attach(link, federation)

    def _start(self, federation: Federation) -> SyncPoint:
        if federation.inner_steps < 1:
            raise IncompatibleClientError(
                f"the coordinator announced inner_steps={federation.inner_steps}; "
                "it must be >= 1"
            )
        self._inner_steps = federation.inner_steps
        if federation.model_spec is not None:
            self._local.adopt_wire_spec(federation.model_spec)
        log.info(
            "client_joined",
            client=self._connection.client_id,
            run=federation.run_id,
            inner_steps=federation.inner_steps,
            seed=federation.seed_model,
            update_hash=federation.update_hash,
        )
        secure = None if self._secure is None else self._secure.updates
        sync = build_sync(
            self._connection, federation, self._local, self._config, self._settings,
            attach=weak_attach(weakref.ref(self)),
            range_encoders=() if self._secure is None else self._secure.range_updates,
        )  # fmt: skip
        sync.compressed = whole_encoder(
            sync, federation, self._config, secure, self._local.spec.num_coordinates
        )
        sync.update_transform = self._update_transform
        sync.record_dp = None if self._record_dp is None else self._record_dp.claim
        sync.evaluation = self._evaluation
        if federation.seed_model:
            sync.seed()
        # The coordinator holds this pull until some client has seeded.
        sync.pull_and_load(0, wait_s=self._config.connect_timeout_s)
        return sync

    def step(
        self, loss: float | torch.Tensor | None = None, num_samples: int = 1
    ) -> bool:
        """Count one inner step; every H-th call runs an outer step and blocks.

        With `round_mode = "deadline"` it comes when the round's time is up;
        with `"streaming"` every H/P steps, each moving one fragment, whose
        result is merged `streaming_overlap_steps` steps later (a call that
        merges also returns True).

        Call after each `optimizer.step()`. At the sync point the client
        waits for a round on its model version, pushes its pseudo-gradient,
        waits for the round to close and, if it was applied, loads the new
        global weights into the model in place.

        Args:
            loss: This step's training loss, averaged and reported to the
                coordinator for status. A tensor costs `.item()`, which
                synchronises CUDA; pass a float or None in tight GPU loops.
            num_samples: Training samples in this step; they weight this
                client's update in the coordinator's mean.

        Returns:
            True if this call ran a sync point (the weights may have changed).

        Transient faults (the channel breaks, UNAVAILABLE, the coordinator
        drains or restarts) do not raise: the client re-joins with backoff
        and finishes the sync point, or, if the coordinator stays away for
        `reconnect_max_s`, returns with `last_round_outcome == "offline"`
        and retries at the next sync point (`fedgrpc.client.reconnect`).

        Once the run ended (the coordinator's `max_rounds`), `finished` is
        True, the model holds the final global weights, and every later
        sync point returns at once with `last_round_outcome == "finished"`
        without contacting the coordinator: stop the loop and `close()`.

        Raises:
            CoordinatorUnavailableError: the coordinator has been away for
                `reconnect_give_up_s`.
            ShuttingDownError: the same, and it last said it was shutting down.
            UnknownClientError, IncompatibleClientError,
                UntrustedCoordinatorError: a coordinator that came back refuses
                this client or is another one (permanent; raised at once).
            RuntimeError: the client is closed.
        """
        if self._closed:
            raise RuntimeError("DiLoCoClient.step() called after close()")
        value = loss.item() if isinstance(loss, torch.Tensor) else loss
        self._local.record(None if value is None else float(value), num_samples)
        self._steps += 1
        streaming = self._sync if isinstance(self._sync, StreamingSync) else None
        if streaming is not None and streaming.merge_due():
            self._last_outcome = self._reconnector.run(streaming, streaming.merge)
            self._evaluate_global()
            return True
        if not self._sync.due(self._steps, self._inner_steps):
            return False
        if self._sync.finished:  # nothing to push to; the coordinator may be gone
            self._last_outcome, self._steps = "finished", 0
            return True
        self._last_outcome = self._reconnector.run(self._sync)
        self._steps = 0
        self._rounds_completed += 1
        self._evaluate_global()
        return True

    def _evaluate_global(self) -> None:
        """Run `evaluate` if the model holds a version it has not seen.

        Streaming merges fragments into weights that go on training: the
        global model is swapped in for the evaluation (`holding_global`).
        """
        if self._evaluation is not None:
            sync, local = self._sync, self._local
            swap = isinstance(sync, StreamingSync) and not sync.finished
            holding = local.holding_global if swap else None
            self._evaluation.maybe_run(local.base_version, holding)

    def global_state_dict(self) -> dict[str, torch.Tensor]:
        """The latest global model as a `state_dict` a fresh model loads strictly.

        Federated tensors as last pulled (in the model's dtypes, every alias
        of a tied weight included), tensors that never travel (frozen under
        `federate="trainable"`, `local_modules`) as this client holds them
        now. Copies on the CPU: safe to keep, save or load elsewhere while
        training goes on.
        """
        return self._local.global_state_dict()

    @property
    def eval_history(self) -> list[GlobalEval]:
        """Every `evaluate` result so far, oldest first (empty without one)."""
        return [] if self._evaluation is None else list(self._evaluation.history)

    def close(self) -> None:
        """Leave the session, close the channel, stop the loop. Idempotent.

        With a throwaway key the leave is final: the coordinator forgets
        this client (it could never come back under that key).
        """
        if self._closed:
            return
        self._closed = True
        self._leave_once()
        sync = getattr(self, "_sync", None)  # absent if the join failed
        if isinstance(sync, StreamingSync | ShardedSync):
            sync.close()  # after the leave: a fragment in flight fails fast

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def client_id(self) -> str:
        """Id the coordinator assigned at Join."""
        return self._sync.client_id

    @property
    def model_version(self) -> int:
        """Global model version the local weights started from (the base)."""
        return self._local.base_version

    @property
    def round_mode(self) -> str:
        """How the coordinator paces rounds (Join): sync, deadline, ..., streaming."""
        return self._sync.federation.round_mode

    @property
    def inner_steps(self) -> int:
        """H: inner steps per round, as announced by the coordinator."""
        return self._inner_steps

    @property
    def finished(self) -> bool:
        """True once the run ended (`max_rounds`) and the final model is loaded."""
        return self._sync.finished

    @property
    def syncs_next(self) -> bool:
        """True if the next `step()` runs a sync point (H, or the round's time up)."""
        return self._sync.due(self._steps + 1, self._inner_steps)

    @property
    def rounds_completed(self) -> int:
        """Sync points this client has finished (any outcome)."""
        return self._rounds_completed

    @property
    def bytes_sent(self) -> int:
        """Update payload bytes pushed (initial weights included)."""
        return self._sync.bytes_sent

    @property
    def bytes_received(self) -> int:
        """Model payload bytes pulled."""
        return self._sync.bytes_received

    @property
    def last_update_sha256(self) -> str:
        """Digest of the last update pushed, as the coordinator verified it.

        Hex SHA-256 (the chain head of its signed chunks, see
        `fedgrpc.crypto.signing`); "" before the first push or when the
        coordinator runs unsigned. `fedgrpc verify --update FILE --hash` checks
        an exported update (`ClientConfig.export_updates_dir`) against it.
        """
        return self._sync.last_update_sha256

    @property
    def last_round_outcome(self) -> SyncOutcome | None:
        """How the last sync point ended (see `sync.SyncOutcome`); None before."""
        return self._last_outcome
