"""glibc malloc, told to give large freed blocks back to the OS (the daemon only).

glibc serves requests above `M_MMAP_THRESHOLD` with their own mapping and
returns it to the OS on free. The threshold starts at 128 KiB and *moves*:
each freed mapping raises it to that block's size (up to 32 MiB), so after
the first 1 MiB message or 4 MiB fold block is freed, later ones come from
the heap arenas, where they fragment and stay resident. Measured on the
coordinator (bench/round_latency.py, 10.5M parameters x 2 clients, glibc
`mallinfo2` sampled over the rounds): 20-70 MB of free-but-resident heap
at the peak, up to 1.7x the model with stages and optimizer state on disk
(whose 4 MiB blocks churn most). Pinning the threshold at 2 MiB (setting
it switches the moving rule off) keeps 1 MiB gRPC messages in the heap,
where they recycle, and maps every block from 2 MiB up, returned when
freed: peak RSS net of the baseline went from 3.9x to 3.0x the model in
that lean setup, and the default setup's free heap from ~0.55x to ~0.3x.

Free-but-resident heap that is left, mostly small gRPC buffers from the
round's ingest scattered among live ones, stays resident until glibc can
give whole pages back. `release_free_heap` (`malloc_trim(0)`, which walks
every arena and returns each free page) runs once per round after
ingest and before the sum buffer is taken. Measured on the same lean
10.5M setup, 8 interleaved pairs under load 3-5: peak RSS net median
2.89x the model (2.77-3.48) against 3.09x (2.95-3.35) without it, lower
in 7 pairs of 8. `MALLOC_ARENA_MAX=1` gave nothing measurable.

Pinning the mmap threshold also freezes glibc's *trim* threshold at its
128 KiB default (the moving rule would have doubled it with the mmap
threshold). Each free that leaves more than that at the top of a heap then
hands the top back with `madvise(MADV_DONTNEED)`, and the next messages
fault it in again: strace of a 100.7M x 2 clients round showed ~150
such calls of 2-8 MB a round, ~500 MB of pages re-faulted a round. So
the daemon also pins the trim threshold at `TRIM_THRESHOLD_BYTES` (16 MiB)
unless it runs lean (`staging_memory_mb = 0`, memory before speed): the
free heap stays resident for the next messages and goes back once a round
with `release_free_heap`. Measured (same bench, 100.7M default, one
quiet session, 6 interleaved pairs, 4 of them at this threshold): the
coordinator's page faults 0.93-1.15M -> 0.48-0.54M per run, its system
time 11-37 % lower; peak RSS net within 0.1x of the model at 100.7M,
+0.4x at 10.5M (42 MB model; 5.1x -> 5.5x).

Only `fedgrpc serve` calls `pin_mmap_threshold`, and `release_free_heap`
acts only after it did: an embedding process (the in-process `Coordinator`)
keeps its own allocator behaviour. A user's own `MALLOC_MMAP_THRESHOLD_`
or `MALLOC_TRIM_THRESHOLD_` wins; musl and non-Linux systems are left
alone.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

from fedgrpc.log import get_logger

log = get_logger(__name__)
M_MMAP_THRESHOLD = -3
"""mallopt's parameter number for the mmap threshold (glibc malloc.h)."""
MMAP_THRESHOLD_BYTES = 2 << 20
"""Above one chunk message (1 MiB by default), below a 4 MiB block."""
M_TRIM_THRESHOLD = -1
"""mallopt's parameter number for the trim threshold (glibc malloc.h)."""
TRIM_THRESHOLD_BYTES = 16 << 20
"""Free space a heap's top may keep: above the 2-8 MB of messages that churned."""
_glibc: ctypes.CDLL | None = None
"""Set once `pin_mmap_threshold` pinned: the daemon's allocator is ours to tune."""


def pin_mmap_threshold(keep_free_heap: bool = True) -> bool:
    """Fix glibc's mmap threshold at `MMAP_THRESHOLD_BYTES`; True if done.

    `keep_free_heap`: also pin the trim threshold at `TRIM_THRESHOLD_BYTES`,
    so freed message buffers are reused instead of re-faulted (False: a
    lean coordinator, whose peak memory matters more than its faults).
    """
    if sys.platform != "linux" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
        keep = done and keep_free_heap and "MALLOC_TRIM_THRESHOLD_" not in os.environ
        if keep:
            keep = bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc
        return False
    log.debug(
        "malloc_thresholds",
        mmap_bytes=MMAP_THRESHOLD_BYTES,
        pinned=done,
        trim_bytes=TRIM_THRESHOLD_BYTES if keep else None,
    )
    global _glibc
    _glibc = libc if done else None
    return done


def release_free_heap() -> bool:
    """Give every free heap page back to the OS (`malloc_trim(0)`); True if done.

    A no-op unless `pin_mmap_threshold` pinned (the daemon). Blocking (a
    walk of every arena, a few ms at 100 MB of heap): call it from a worker
    thread. ctypes drops the GIL for the call.
    """
    libc = _glibc
    if libc is None:
        return False
    started = time.perf_counter()
    released = bool(libc.malloc_trim(0))
    log.debug(
        "malloc_trim",
        released=released,
        ms=round(1e3 * (time.perf_counter() - started), 2),
    )
    return True
