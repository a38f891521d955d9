"""`fedgrpc.Coordinator`: the `fedgrpc serve` pipeline inside a Python program.

The same server factory as the daemon (`services.server.start_coordinator`),
run on a background thread with its own event loop, so plain synchronous
code (a notebook, a test, `fedgrpc simulate`) can start a coordinator, wait
for rounds, read its status and stop it, without touching asyncio:

    with fedgrpc.Coordinator(config) as coordinator:
        address = coordinator.address           # port 0 resolved
        ... start clients against address ...
        coordinator.wait_for_round(3, timeout=60)  # or wait_finished()
        print(coordinator.status().model_version)

Every method is thread-safe: each runs its work on the coordinator's loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.faults import NO_FAULTS, FaultHooks
from fedgrpc.coordinator.rounds.records import Outcome, Phase
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.coordinator.runtime import CoordinatorRuntime
from fedgrpc.coordinator.services.in_thread import CoordinatorThread
from fedgrpc.coordinator.strategy.trust import TrustBook
from fedgrpc.coordinator.strategy.wiring import StagePlugins
from fedgrpc.domain.status import ClientSummary, CoordinatorStatus, RoundSummary
from fedgrpc.errors import ConfigError

T = TypeVar("T")
DEFAULT_STOP_GRACE_S = 1.0
"""Seconds in-flight calls get to finish when `stop()` is not told otherwise."""


class Coordinator:
    """A coordinator running in this process; a context manager.

    `start()` binds (port 0 picks a free port) and returns the address;
    `stop()` drains like SIGTERM does for `fedgrpc serve`: clients are told,
    the open round is abandoned, the final checkpoint is written.
    """

    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        aggregator: object | None = None,
        outer_optimizer: object | None = None,
        faults: FaultHooks = NO_FAULTS,
    ) -> None:
        """Check nothing yet: `start()` builds and validates every stage.

        Args:
            config: As for `fedgrpc serve` (`CoordinatorConfig.from_toml`).
            aggregator: A user Aggregator (an instance, a class or a factory
                called with `config.aggregator_params`) used instead of
                `config.aggregator`; checked at `start()` against the
                Protocol and against the other settings (for instance, one
                that needs every update cannot run with secure aggregation).
            outer_optimizer: A user OuterOptimizer, likewise, instead of
                `config.outer_optimizer`; its `state_dict` is checkpointed.
            faults: Test-only failure points (`coordinator.faults`).
        """
        self.config = config
        plugins = StagePlugins(aggregator=aggregator, outer_optimizer=outer_optimizer)
        self._thread = CoordinatorThread(config, faults, plugins=plugins)
        self._started = False
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> str:
        """Bind, start serving and return the bound `host:port`.

        Raises:
            ConfigError: the listen address, TLS files or identity settings
                are unusable (the same checks as `fedgrpc serve`).
            RuntimeError: `start()` was already called.
        """
        if self._started:
            raise RuntimeError("Coordinator.start() was already called")
        self._started = True
        try:
            self._thread.start()
        except BaseException:
            self._thread.stop()
            raise
        return self.address

    def stop(self, grace: float = DEFAULT_STOP_GRACE_S) -> None:
        """Drain and stop; idempotent. `grace`: seconds in-flight calls get."""
        self._stopped = True
        self._thread.stop(grace)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- reading -------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The `host:port` clients connect to (raises before `start`)."""
        return self._thread.address

    @property
    def dashboard_url(self) -> str:
        """The dashboard's address (`http_listen`); "" when it serves none."""
        http = self._thread.running.http
        return http.url if http is not None else ""

    @property
    def runtime(self) -> CoordinatorRuntime:
        """The live runtime, for tests that inspect internals (read only).

        Raises:
            RuntimeError: before `start()` or after `stop()`.
        """
        if self._stopped:
            raise RuntimeError("the coordinator is stopped")
        return self._thread.running.runtime

    def status(self) -> CoordinatorStatus:
        """A snapshot of the run, taken on the coordinator's loop."""
        runtime = self.runtime

        async def snapshot() -> CoordinatorStatus:
            return build_status(runtime)

        return self._call(snapshot(), timeout=10.0)

    def wait_for_round(self, round_id: int, *, timeout: float) -> CoordinatorStatus:
        """Block until round `round_id` has closed (applied or skipped).

        Returns the status right after; the round is `status.rounds[-1]` or
        earlier if more closed meanwhile.

        Raises:
            TimeoutError: it had not closed within `timeout` seconds.
            RuntimeError: the coordinator stopped, or the run finished
                (`max_rounds`), first.
        """
        runtime = self.runtime

        def reached() -> bool:
            return (
                _rounds_closed(runtime) >= round_id
                or runtime.run.stopping
                or runtime.engine.finished
            )

        self._wait(reached, timeout, f"round {round_id} to close")
        if _rounds_closed(runtime) < round_id:
            why = "run finished" if runtime.engine.finished else "coordinator stopped"
            raise RuntimeError(f"the {why} before round {round_id} closed")
        return self.status()

    def wait_finished(self, *, timeout: float) -> CoordinatorStatus:
        """Block until the run's last round (`max_rounds`, or `max_epsilon`) closed.

        The final checkpoint is on disk by then (a failed write is retried
        first: `status().serving` is False meanwhile), and every connected
        client has been told. Returns the status (`phase == "finished"`).

        Raises:
            ConfigError: `max_rounds` and `max_epsilon` are 0: it never finishes.
            TimeoutError: it had not finished within `timeout` seconds.
            RuntimeError: the coordinator stopped first.
        """
        budget = self.config.privacy != "off" and self.config.max_epsilon > 0
        if self.config.max_rounds == 0 and not budget:
            raise ConfigError(
                "wait_finished needs max_rounds > 0 or a privacy budget (a run "
                "without either never finishes); use wait_for_round(n) or set "
                "max_rounds"
            )
        runtime = self.runtime

        def reached() -> bool:
            finished = runtime.engine.finished and runtime.durable.serving
            return finished or runtime.run.stopping

        self._wait(
            reached, timeout, f"the run to finish (max_rounds={self.config.max_rounds})"
        )
        if not runtime.engine.finished:
            raise RuntimeError("the coordinator stopped before the run finished")
        return self.status()

    # -- helpers -------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        runtime = self.runtime

        async def wait() -> None:
            await asyncio.wait_for(runtime.wait_until(predicate), timeout)

        try:
            self._call(wait(), timeout=timeout + 10.0)
        except TimeoutError as exc:
            raise TimeoutError(
                f"timed out after {timeout:g} s waiting for {what}"
            ) from exc

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        if self._stopped:
            coroutine.close()
            raise RuntimeError("the coordinator is stopped")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._thread.loop)
        return future.result(timeout)


def _rounds_closed(runtime: CoordinatorRuntime) -> int:
    history = runtime.engine.history
    return history[-1].round_id if history else 0


def build_status(runtime: CoordinatorRuntime) -> CoordinatorStatus:
    """The runtime's state as domain types (on its loop; no tensor is touched)."""
    engine, registry = runtime.engine, runtime.registry
    current, spec = engine.current, engine.model.spec
    phase = engine.phase
    if runtime.run.stopping:
        phase = Phase.STOPPING
    return CoordinatorStatus(
        run_id=runtime.run.run_id,
        phase=phase.value,
        round_id=current.round_id if current is not None else 0,
        model_version=engine.model.version,
        num_parameters=(
            spec.num_coordinates
            if spec is not None and engine.model.master is not None
            else 0
        ),
        clients=tuple(_client_summary(c, engine.trust) for c in registry.all()),
        rounds=tuple(
            RoundSummary(
                r.round_id,
                r.outcome is Outcome.APPLIED,
                r.num_updates,
                r.duration_s,
                r.mean_train_loss,
                r.reason,
                r.privacy_epsilon,
            )
            for r in engine.history
        ),
        bytes_received=runtime.run.bytes_received,
        bytes_sent=runtime.run.bytes_sent,
        uptime_s=runtime.clock() - runtime.run.started_s,
        serving=runtime.durable.serving,
        not_serving_reason=runtime.durable.not_serving_reason,
        **engine.privacy.report().status_fields(),
        privacy_exhausted=engine.privacy.exhausted,
    )


def _client_summary(c: ClientRecord, trust: TrustBook | None) -> ClientSummary:
    """One client's row; its trust columns keep their defaults while trust is off."""
    summary = ClientSummary(
        c.client_id,
        c.name,
        c.connected,
        c.updates_accepted,
        c.samples_contributed,
        c.last_round,
        c.last_train_loss,
        c.excluded_until_round,
        c.exclusion_reason,
    )
    if c.record_dp is not None:
        dp = c.record_dp
        summary = dataclasses.replace(summary, record_dp_epsilon=dp.epsilon,
                                      record_dp_delta=dp.delta,
                                      record_dp_steps=dp.steps)  # fmt: skip
    if trust is None:
        return summary
    standing = trust.standing(c.client_id)
    return dataclasses.replace(
        summary,
        trust_score=standing.score,
        trust_state=standing.state,
        trust_weight_factor=standing.weight_factor(trust.settings),
        first_quarantined_round=standing.first_quarantined_round,
    )
