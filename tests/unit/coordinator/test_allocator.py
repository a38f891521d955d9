"""`pin_mmap_threshold`: a freed 4 MiB block no longer moves glibc's threshold.

Run in a fresh interpreter each time (mallopt is process-wide): after a
4 MiB block is freed, glibc's moving threshold serves the next 4 MiB block
from the heap (no mapping: `mallinfo2().hblkhd` does not grow); pinned, the
next one is mapped again, so freeing it returns it to the OS. Then the
once-a-round `release_free_heap`, and the pinned trim threshold that keeps
a freed heap top resident until it runs.
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


def _run(script: str, mode: str, **env: str) -> dict[str, int]:
    """`script` in a fresh interpreter (mallopt is process-wide), its JSON line."""
    done = subprocess.run(
        [sys.executable, "-c", script, mode],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, **env},
    )  # fmt: skip
    return dict(json.loads(done.stdout))


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_pinned_threshold_maps_every_large_block() -> None:
    pinned = {"pinned": True, "mapped": pytest.approx(4 << 20, rel=0.01)}
    assert _run(PROBE, "pin") == pinned
    assert _run(PROBE, "none")["mapped"] == 0  # glibc's moving threshold: heap


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_a_users_own_setting_wins() -> None:
    assert _run(PROBE, "pin", MALLOC_MMAP_THRESHOLD_="131072")["pinned"] is False


RSS_SETUP = """
import ctypes, json, sys
from fedgrpc.coordinator.ops.allocator import pin_mmap_threshold, release_free_heap
def rss_anon():
    with open("/proc/self/status") as status:
        line = next(l for l in status if l.startswith("RssAnon"))
    return int(line.split()[1]) * 1024
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
"""
"""What both RSS probes start with: the resident anonymous bytes and libc."""

TRIM_PROBE = (
    RSS_SETUP
    + """
pinned = pin_mmap_threshold() if sys.argv[1] == "pin" else False
big, pins = [], []
for _ in range(1024):  # 64 MiB of 64 KiB heap blocks, each fenced by a live one
    block = libc.malloc(64 << 10)
    libc.memset(block, 1, 64 << 10)
    big.append(block)
    pins.append(libc.malloc(64))
for block in big:
    libc.free(block)  # free, but between live blocks: resident
before = rss_anon()
done = release_free_heap()
print(json.dumps({"pinned": pinned, "done": done, "released": before - rss_anon()}))
"""
)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_release_free_heap_returns_fenced_free_blocks_once_pinned() -> None:
    report = _run(TRIM_PROBE, "pin")
    assert report["pinned"]
    assert report["done"]
    assert report["released"] > 32 << 20  # over half the 64 MiB left the process
    report = _run(TRIM_PROBE, "none")
    assert report["done"] is False
    assert report["released"] < 8 << 20  # untouched


KEEP_PROBE = (
    RSS_SETUP
    + """
pinned = pin_mmap_threshold(keep_free_heap=sys.argv[1] == "keep")
blocks = []
for _ in range(8):  # 8 MiB of 1 MiB blocks: heap, under the 2 MiB mmap threshold
    block = libc.malloc(1 << 20)
    libc.memset(block, 1, 1 << 20)
    blocks.append(block)
resident = rss_anon()
for block in reversed(blocks):
    libc.free(block)  # they merge into the heap's top
freed = rss_anon()
release_free_heap()
print(json.dumps({"pinned": pinned, "on_free": resident - freed,
                  "on_trim": freed - rss_anon()}))
"""
)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_a_kept_free_heap_top_waits_for_the_rounds_trim() -> None:
    """Freed message buffers stay for reuse; the once-a-round trim returns them."""
    kept = _run(KEEP_PROBE, "keep")
    assert kept["pinned"]
    assert kept["on_free"] < 1 << 20  # not handed back (and re-faulted) per free
    assert kept["on_trim"] > 6 << 20  # returned once, by release_free_heap
    lean = _run(KEEP_PROBE, "lean")  # glibc's 128 KiB: every top over it goes back
    assert lean["pinned"]
    assert lean["on_free"] > 6 << 20


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_a_users_own_trim_threshold_wins() -> None:
    report = _run(KEEP_PROBE, "keep", MALLOC_TRIM_THRESHOLD_="131072")
    assert report["pinned"]
    assert report["on_free"] > 6 << 20
