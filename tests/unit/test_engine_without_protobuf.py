"""The round engine and the math packages load without protobuf (DESIGN.md).

Domain types live in `fedgrpc.domain`, so a round can be driven, and every
stage tested, without the wire format. Each import runs in a fresh interpreter:
this test process has long since loaded `_pb2` modules through other tests.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PROTOBUF_FREE = (
    "fedgrpc.domain",
    "fedgrpc.domain.model_spec",
    "fedgrpc.domain.chunks",
    "fedgrpc.domain.requests",
    "fedgrpc.domain.codecs",
    "fedgrpc.coordinator.rounds",
    "fedgrpc.coordinator.rounds.engine",
    "fedgrpc.coordinator.rounds.rules",
    "fedgrpc.coordinator.rounds.records",
    "fedgrpc.coordinator.rounds.registry",
    "fedgrpc.coordinator.rounds.global_model",
    "fedgrpc.optim",
    "fedgrpc.aggregate",
    "fedgrpc.compress",
)
_PROBE = """
import importlib, sys
importlib.import_module(sys.argv[1])
loaded = sorted(
    name for name in sys.modules
    if name.endswith(("_pb2", "_pb2_grpc")) or name.split(".")[0] in ("grpc", "google")
)
print(",".join(loaded))
"""


def _protobuf_modules_loaded_by(module: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, module],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [name for name in out.stdout.strip().split(",") if name]


def test_probe_sees_protobuf_when_a_wire_module_is_imported() -> None:
    assert "fedgrpc._proto.v1.common_pb2" in _protobuf_modules_loaded_by(
        "fedgrpc.wire.convert"
    )


@pytest.mark.parametrize("module", PROTOBUF_FREE)
def test_importing_the_engine_and_math_loads_no_protobuf(module: str) -> None:
    assert _protobuf_modules_loaded_by(module) == []
