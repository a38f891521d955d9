"""The `serve` flags of where the coordinator keeps model-sized state: RAM or disk.

One job: the memory a coordinator peaks at (updates streaming in, the
outer optimizer's state) against disk traffic. The settings live in
`config.robustness`; `cli_serve_flags.SERVE_FLAGS` includes these.
"""

from __future__ import annotations

from fedgrpc.cli_flags import Flag
from fedgrpc.config import CoordinatorConfig

_D = CoordinatorConfig()

MEMORY_FLAGS = (
    Flag("--staging-memory-mb", "RAM for updates still streaming in: each is "
         "staged apart until it commits, so a broken one costs its round "
         "nothing; past this, dense ones are staged on disk in --spool-dir, 0 "
         f"stages all on disk (default: {_D.staging_memory_mb})", int, "MB"),
    Flag("--outer-state-on-disk", "keep the outer optimizer's state "
         "(momentum; fedadam's two moments) in a file in --spool-dir between "
         "rounds, stepped 4 MiB at a time: one model-sized buffer less in RAM "
         "for writing and reading it once per round; built-in optimizers only; "
         "with --staging-memory-mb 0 the round's sum stays on disk too, where "
         "nothing needs the whole mean in RAM (default: in RAM)", const=True),
)  # fmt: skip
"""RAM against disk for the coordinator's model-sized state."""
