"""`pin_mmap_threshold`: a freed 4 MiB block no longer moves glibc's threshold.

Run in a fresh interpreter each time (mallopt is process-wide): after a
4 MiB block is freed, glibc's moving threshold serves the next 4 MiB block
from the heap (no mapping: `mallinfo2().hblkhd` does not grow); pinned, the
next one is mapped again, so freeing it returns it to the OS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, json, sys
from fedgrpc.coordinator.ops.allocator import pin_mmap_threshold
class MI(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks",
        "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MI
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
pinned = pin_mmap_threshold() if sys.argv[1] == "pin" else False
libc.free(libc.malloc(4 << 20))  # the free that moves an unpinned threshold
before = libc.mallinfo2().hblkhd
block = libc.malloc(4 << 20)
mapped = libc.mallinfo2().hblkhd - before
libc.free(block)
print(json.dumps({"pinned": pinned, "mapped": mapped}))
"""


def _probe(mode: str, **env: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, **env},
    )  # fmt: skip
    return dict(json.loads(done.stdout))


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_pinned_threshold_maps_every_large_block() -> None:
    assert _probe("pin") == {"pinned": True, "mapped": pytest.approx(4 << 20, rel=0.01)}
    assert _probe("none")["mapped"] == 0  # glibc's moving threshold: heap


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_a_users_own_setting_wins() -> None:
    assert _probe("pin", MALLOC_MMAP_THRESHOLD_="131072")["pinned"] is False
