"""A coordinator on its own thread: tests, benches, simulate, `fedgrpc.Coordinator`.

Apart from `server` (which binds and serves on the caller's loop) because
its job is different: owning a private event loop and thread, and making
the coordinator's state readable from other threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from fedgrpc._proto.v1 import admin_pb2
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.faults import NO_FAULTS, FaultHooks
from fedgrpc.coordinator.services.admin import build_status
from fedgrpc.coordinator.services.server import RunningCoordinator, start_coordinator
from fedgrpc.coordinator.strategy.wiring import NO_PLUGINS, StagePlugins


class CoordinatorThread:
    """A coordinator on its own thread and event loop (tests, benches, simulate)."""

    def __init__(
        self,
        config: CoordinatorConfig,
        faults: FaultHooks = NO_FAULTS,
        *,
        plugins: StagePlugins = NO_PLUGINS,
    ) -> None:
        self.config = config
        self._faults = faults
        self._plugins = plugins
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fedgrpc-coordinator", daemon=True
        )
        self._running: RunningCoordinator | None = None
        self._stop_lock = threading.Lock()

    @property
    def address(self) -> str:
        """host:port the coordinator listens on."""
        return self.running.address

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The coordinator's event loop (for `run_coroutine_threadsafe`)."""
        return self._loop

    @property
    def running(self) -> RunningCoordinator:
        """The started coordinator (raises before `start`)."""
        if self._running is None:
            raise RuntimeError("CoordinatorThread.start() has not been called")
        return self._running

    def start(self) -> CoordinatorThread:
        """Start the loop thread and the server; returns once serving."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_coordinator(self.config, self._faults, plugins=self._plugins),
            self._loop,
        )
        self._running = future.result(timeout=30)
        return self

    def status(self) -> admin_pb2.GetStatusResponse:
        """A status snapshot, taken on the coordinator's loop (thread-safe)."""
        runtime = self.running.runtime

        async def snapshot() -> admin_pb2.GetStatusResponse:
            return build_status(runtime)

        return asyncio.run_coroutine_threadsafe(snapshot(), self._loop).result(10)

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop the server and the loop thread; idempotent and thread-safe."""
        with self._stop_lock:  # a second caller waits for the first to finish
            if self._running is not None:
                running, self._running = self._running, None
                asyncio.run_coroutine_threadsafe(
                    running.stop(grace_s), self._loop
                ).result(timeout=grace_s + 30)
            if self._thread.is_alive():
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=10)
            if not self._loop.is_running() and not self._loop.is_closed():
                self._loop.close()


@contextlib.contextmanager
def serve_in_thread(
    config: CoordinatorConfig,
    faults: FaultHooks = NO_FAULTS,
    *,
    plugins: StagePlugins = NO_PLUGINS,
) -> Iterator[CoordinatorThread]:
    """A coordinator on a background thread for the `with` block (see `address`)."""
    coordinator = CoordinatorThread(config, faults, plugins=plugins).start()
    try:
        yield coordinator
    finally:
        coordinator.stop()
