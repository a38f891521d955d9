"""`--crash-rate`: which sync points kill a simulated client, reproducibly.

A crash is drawn per *attempt*: each time client i's process reaches a
sync point (its H-th inner step since the last one) it draws u ~ U[0, 1)
and, if u < P, dies there with `os._exit(CRASH_EXIT_CODE)` before pushing:
no Leave, no channel close, the kernel drops its sockets, exactly what a
killed machine looks like to the coordinator. The round's H steps are lost
(wasted compute in goodput). The launcher restarts the process with the
same identity key and the next attempt number; the new process re-joins
(the coordinator finds the same record by key, so standing and credit
stay), pulls the current global model and trains that round again.

Each draw comes from its own counter-based stream, SeedSequence((seed, i,
attempt)) (NumPy's recommended way to derive independent streams, see
numpy.random.SeedSequence), so the sequence of crashes depends only on
(seed, i): not on which process makes the draw, nor on timing. That makes
the crash count of a run computable in advance (`planned_crashes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedgrpc.errors import ConfigError

CRASH_EXIT_CODE = 75
"""Exit status of a simulated crash; any other non-zero status is a failure."""
DEFAULT_MAX_RESTARTS = 10
"""Restarts per client before it stops crashing (`--max-restarts`)."""


def crash_draw(seed: int, client: int, attempt: int) -> float:
    """Draw u ~ U[0, 1) for client `client`'s `attempt`-th sync point (0-based)."""
    import numpy as np  # here: the CLI parses --speeds with this module, fast

    stream = np.random.SeedSequence((seed, client, attempt))
    return float(np.random.default_rng(stream).random())


def crashes_at(
    seed: int, client: int, attempt: int, rate: float, restarts_left: int
) -> bool:
    """Whether this attempt kills the process (never once the restarts ran out)."""
    return restarts_left > 0 and crash_draw(seed, client, attempt) < rate


@dataclass(slots=True)
class CrashSchedule:
    """One process's crash draws, one per sync point it reaches."""

    seed: int
    client: int
    rate: float
    restarts_left: int
    attempt: int = 0
    """The next sync point's attempt number (earlier processes' included)."""

    def crash_now(self, at_sync_point: bool) -> bool:
        """True if this process must die at this inner step.

        Only a step whose `step()` call would sync (`DiLoCoClient.syncs_next`:
        the H-th since the last one, or in deadline mode the one at which
        the round's time is up) can be; `attempt` then numbers that sync
        point.
        """
        if not at_sync_point:
            return False
        if crashes_at(self.seed, self.client, self.attempt, self.rate,
                      self.restarts_left):  # fmt: skip
            return True
        self.attempt += 1
        return False


def planned_crashes(
    seed: int, client: int, rounds: int, rate: float, max_restarts: int
) -> int:
    """How many times client `client` crashes in a run of `rounds` sync rounds.

    With `sync` rounds every client completes exactly `rounds` sync points
    (a round waits for the restarted client), and each crash spends one
    attempt without completing one: attempts are drawn until `rounds`
    complete or the restarts run out.
    """
    crashes = completed = attempt = 0
    while completed < rounds:
        if crashes_at(seed, client, attempt, rate, max_restarts - crashes):
            crashes += 1
        else:
            completed += 1
        attempt += 1
    return crashes


def parse_speeds(text: str) -> tuple[float, ...]:
    """`--speeds 1,1,2,4` -> (1.0, 1.0, 2.0, 4.0); see `check_speeds`.

    Raises:
        ConfigError: an entry is not a number.
    """
    factors = []
    for entry in text.split(","):
        try:
            factors.append(float(entry))
        except ValueError:
            raise ConfigError(
                f"--speeds {text!r}: {entry.strip()!r} is not a number "
                "(expected comma-separated slowdown factors, e.g. 1,1,2,4)"
            ) from None
    return tuple(factors)


def check_speeds(speeds: tuple[float, ...], clients: int) -> None:
    """One finite factor >= 1 per client (no cycling: a short list is a typo).

    Raises:
        ConfigError: the wrong count, or a factor below 1, NaN or infinite.
    """
    if speeds and len(speeds) != clients:
        raise ConfigError(
            f"--speeds has {len(speeds)} factor(s) for {clients} clients: give "
            "exactly one slowdown factor per client (e.g. 1,1,2,4 for 4 clients)"
        )
    for index, factor in enumerate(speeds):
        if not math.isfinite(factor) or factor < 1:
            raise ConfigError(
                f"--speeds: client {index}'s factor {factor!r} is invalid: each "
                "must be a finite number >= 1 (1: full speed, 4: 4x slower)"
            )


def check_crash_rate(rate: float, max_restarts: int) -> None:
    """0 <= rate < 1 (a certain crash would never finish a round), restarts >= 0.

    Raises:
        ConfigError: naming the bad value and the valid range.
    """
    if not (math.isfinite(rate) and 0 <= rate < 1):
        raise ConfigError(
            f"--crash-rate {rate!r} is invalid: expected a probability "
            "0 <= P < 1 per client and sync point"
        )
    if max_restarts < 0:
        raise ConfigError(f"--max-restarts {max_restarts!r} is invalid: expected >= 0")
