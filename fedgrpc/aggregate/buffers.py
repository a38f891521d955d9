"""Model-sized float32 buffers, reused across rounds instead of faulted in anew.

A 10.5M-parameter buffer is 42 MB; touching a fresh one costs ~10k page
faults (10-20 ms here) and zeroing a used one a 42 MB memset. Each round
needs a few of them (the sum, one stage per update in flight, see
`staged`), so the coordinator keeps the freed ones here, up to a byte
budget, and zeroes a buffer only when its user needs zeros (a sum that
codec blocks are added into), never when it will be overwritten whole (a
dense update's stage).

Thread-safe: the round engine gives the aggregate back from its apply
thread while the event loop may still be abandoning stages.
"""

from __future__ import annotations

import threading

import torch


class BufferPool:
    """Spare 1-D float32 CPU tensors, kept up to `keep_bytes` in total."""

    def __init__(self, keep_bytes: int) -> None:
        """`keep_bytes`: spares beyond this are freed (returned to the OS)."""
        self.keep_bytes = keep_bytes
        self._spares: list[torch.Tensor] = []
        self._lock = threading.Lock()

    @property
    def spare_bytes(self) -> int:
        """Bytes the spares hold now."""
        with self._lock:
            return sum(s.numel() * 4 for s in self._spares)

    def take(self, numel: int) -> torch.Tensor:
        """A `numel`-long buffer with undefined contents (the caller overwrites it)."""
        spare = self._pop(numel)
        return spare if spare is not None else torch.empty(numel, dtype=torch.float32)

    def take_zeroed(self, numel: int) -> torch.Tensor:
        """A `numel`-long buffer of zeros (a fresh one is zero-mapped: free)."""
        spare = self._pop(numel)
        if spare is None:
            return torch.zeros(numel, dtype=torch.float32)
        return spare.zero_()

    def give(self, buffer: torch.Tensor) -> None:
        """Keep `buffer` for a later `take`, if the budget allows.

        Giving the same tensor twice keeps it once: a round's sum may be
        handed back both by the engine (as the aggregate) and by the
        Accumulator's `discard`.
        """
        if buffer.dtype != torch.float32 or buffer.dim() != 1:
            return
        with self._lock:
            if any(s is buffer for s in self._spares):
                return
            held = sum(s.numel() * 4 for s in self._spares)
            if held + buffer.numel() * 4 <= self.keep_bytes:
                self._spares.append(buffer)

    def clear(self) -> None:
        """Free every spare."""
        with self._lock:
            self._spares.clear()

    def _pop(self, numel: int) -> torch.Tensor | None:
        with self._lock:
            for i, spare in enumerate(self._spares):
                if spare.numel() == numel:
                    return self._spares.pop(i)
        return None
