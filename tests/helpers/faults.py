"""Fault hooks tests install in a real coordinator, and a `fedgrpc serve` that has them.

In process: `serve_in_thread(config, faults=DropAck("c00001", 1))`.
As a daemon: `python -m tests.helpers.faults --crash-at STAGE:ROUND serve FLAGS`
builds its configuration exactly as `fedgrpc serve FLAGS` does
(`fedgrpc.cli.serve_config`) and runs the same `serve`, with the hook installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence

from fedgrpc.cli import build_parser, serve_config
from fedgrpc.coordinator.faults import CheckpointStage, FaultHooks
from fedgrpc.coordinator.services.server import serve
from fedgrpc.errors import ShuttingDownError
from fedgrpc.log import configure_logging, get_logger

log = get_logger(__name__)


class DropAck(FaultHooks):
    """Answer one client's committed update for one round with UNAVAILABLE.

    As a connection lost between the commit and its acknowledgement would:
    the update counts, the client does not hear so.
    """

    def __init__(self, client_id: str, round_id: int) -> None:
        self.target = (client_id, round_id)

    def update_committed(self, client_id: str, round_id: int) -> None:
        """Refuse the acknowledgement of the targeted update."""
        if (client_id, round_id) == self.target:
            raise ShuttingDownError(
                "DropAck: the acknowledgement of this committed update was dropped"
            )


class CrashAt(FaultHooks):
    """SIGKILL the process, as a power cut would, at one checkpoint stage."""

    def __init__(self, stage: CheckpointStage, round_id: int) -> None:
        self.target = (stage, round_id)

    @classmethod
    def parse(cls, text: str) -> CrashAt:
        """`STAGE:ROUND`, e.g. `before_replace:3`."""
        stage, _, round_id = text.partition(":")
        if stage not in ("before_replace", "after_replace"):
            raise ValueError(f"unknown checkpoint stage {stage!r}")
        return cls(stage, int(round_id))  # type: ignore[arg-type]  # checked above

    def checkpoint_write(self, stage: CheckpointStage, round_id: int) -> None:
        """Die here if this is the targeted stage of the targeted round."""
        if (stage, round_id) == self.target:
            log.warning("checkpoint_crash_point", stage=stage, round=round_id)
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: Sequence[str]) -> int:
    """`--crash-at STAGE:ROUND serve FLAGS...`: `fedgrpc serve` with `CrashAt`."""
    launcher = argparse.ArgumentParser(prog="python -m tests.helpers.faults")
    launcher.add_argument("--crash-at", type=CrashAt.parse, required=True)
    ours, rest = launcher.parse_known_args(argv)
    args = build_parser().parse_args(rest)
    if args.command != "serve":
        launcher.error("only `serve` takes fault hooks")
    config = serve_config(args)
    configure_logging(config.log_format, config.log_level)
    asyncio.run(serve(config, ours.crash_at))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
