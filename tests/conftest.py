"""Suite-wide fixtures: no test may leave a child process running.

`spawn` starts subprocesses that are stopped at teardown even if the test
fails; `_reap_multiprocessing_children` (autouse) does the same for
`multiprocessing` children a test started and forgot. Both act by PID on
processes this test run started, never by name.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import settings

# CI runs must not fail on a freshly drawn example nobody can reproduce; set
# HYPOTHESIS_PROFILE=explore locally to search new examples.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

STOP_GRACE_S = 5.0
"""How long a child gets to exit after SIGTERM before it is SIGKILLed."""

Spawn = Callable[..., "subprocess.Popen[Any]"]
"""Type of the `spawn` fixture: `spawn(argv, **popen_kwargs) -> Popen`."""


def _stop(processes: Sequence[subprocess.Popen[Any]]) -> None:
    """Terminate all first, then wait, so n children cost one grace period."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        process.terminate()
    for process in running:
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start a subprocess that is terminated (killed after 5 s) at teardown."""
    started: list[subprocess.Popen[Any]] = []

    def _spawn(argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        process = subprocess.Popen(argv, **popen_kwargs)
        started.append(process)
        return process

    yield _spawn
    _stop(started)


@pytest.fixture(autouse=True)
def _reap_multiprocessing_children() -> Iterator[None]:
    """Stop multiprocessing children that this test started and left running."""
    before = {child.pid for child in multiprocessing.active_children()}
    yield
    leftovers = [c for c in multiprocessing.active_children() if c.pid not in before]
    for child in leftovers:
        child.terminate()
    for child in leftovers:
        child.join(STOP_GRACE_S)
        if child.is_alive():
            child.kill()
            child.join()
