"""Liveness, deadlines and resource bounds: a section of `CoordinatorConfig`.

A mixin so TOML keys and `--flags` stay flat; `CoordinatorConfig` inherits
it and calls `_check_limits` from its `__post_init__`. Not slotted:
slotted dataclasses cannot be combined as several bases.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgrpc.errors import check_config as _check


@dataclass(frozen=True, kw_only=True)
class LimitSettings:
    """How long the coordinator waits for whom; see `CoordinatorConfig`."""

    heartbeat_interval_s: float = 5.0
    """Seconds between heartbeats clients are expected to send."""
    session_timeout_s: float = 30.0
    """A client silent this long is dropped from the round it is part of."""

    def _check_limits(self) -> None:
        """Every bound positive; the session outlives a heartbeat."""
        _check(self.heartbeat_interval_s > 0, "heartbeat_interval_s",
               self.heartbeat_interval_s, "> 0")  # fmt: skip
        _check(self.session_timeout_s > self.heartbeat_interval_s, "session_timeout_s",
               self.session_timeout_s, "> heartbeat_interval_s")  # fmt: skip
