"""Whole reads and writes of float32 runs in an unlinked spill file.

Spilled stages (`stage`) and the lean round's sum (`disk_sum`) keep d
float32 values in a file only a descriptor names. `pread`/`pwrite` may move
fewer bytes than asked (a signal, a full page cache), so both loop until
the run is done; a read that meets the end of the file early is a broken
spill, never a short update to be zero-filled.
"""

from __future__ import annotations

import os

from fedgrpc.aggregate.stages import F32Array
from fedgrpc.errors import InvalidUpdateError, TooLargeError

ITEM_BYTES = 4
"""Bytes per float32 value."""


def read_exact(fd: int, out: F32Array, first: int) -> None:
    """Fill `out` with the file's values [first, first + len(out)).

    Raises:
        InvalidUpdateError: the file ends before the run does.
    """
    view = memoryview(out.data).cast("B")
    position = first * ITEM_BYTES
    while view:
        got = os.preadv(fd, [view], position)
        if got == 0:
            raise InvalidUpdateError("a staged update is shorter than the model")
        view, position = view[got:], position + got


def write_all(fd: int, values: F32Array, first: int) -> None:
    """The file's values [first, first + len(values)) <- values.

    Raises:
        TooLargeError: the disk is full (or another write error): the
            message says which settings make room.
    """
    view = memoryview(values.data).cast("B")
    position = first * ITEM_BYTES
    try:
        while view:
            written = os.pwrite(fd, view, position)
            view, position = view[written:], position + written
    except OSError as exc:
        raise TooLargeError(
            f"cannot stage an update on disk ({exc.strerror}); raise "
            "staging_memory_mb or free space in spool_dir"
        ) from exc
