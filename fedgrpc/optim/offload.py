"""The outer optimizer's state on disk between rounds (`outer_state_on_disk`).

A coordinator holds the master weights, the round's sum, every dense update
still streaming in, and the optimizer state: one model-sized float32 buffer
for Nesterov and FedAvgM, two for the adaptive family. The state is read
once per round, by the outer step, and sits idle while updates stream in,
which is when the coordinator's memory peaks. So it can live in a file,
as ZeRO-Offload/ZeRO-Infinity keep optimizer state off the accelerator
(Rajbhandari et al. 2021, arXiv 2104.07857), here off the heap:

    for each block [lo, hi) of `BLOCK_COORDINATES` (4 MiB of float32):
        state_blk  <- pread(file, lo, hi)           (nothing the first step)
        inner.step(params[lo:hi], g[lo:hi]) with state_blk
        pwrite(file, lo, hi) <- state_blk

Valid because every built-in optimizer is elementwise: each coordinate's
new weight and state depend on that coordinate alone, and torch computes an
elementwise kernel the same way on a slice as on the whole vector (blocks
start at multiples of 2^20, so SIMD lanes line up): the result is bit for
bit the in-memory one, for every built-in (tests pin this). Plugins may not
be elementwise, so only built-ins are offloaded.

Cost: the state is written and read once per round (2 x its size through
the page cache, which the kernel may write back and reclaim; no RSS), and
one block per state key of RAM. `state_dict` (checkpoints) reads the whole
state back into memory, one tensor at a time.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fedgrpc.errors import InvalidUpdateError, TooLargeError
from fedgrpc.log import get_logger
from fedgrpc.optim.outer import OuterOptimizer, StateDict, check_step_args

log = get_logger(__name__)
BLOCK_COORDINATES = 1 << 20
"""Coordinates stepped per block: 4 MiB of each state tensor in memory."""
GradientBlocks = Callable[[int, int], torch.Tensor]
"""(lo, hi) -> the pseudo-gradient's coordinates [lo, hi) (`step_blocks`)."""


class DiskStateOptimizer:
    """Wraps an elementwise `OuterOptimizer`; its tensors live in temporary files."""

    def __init__(self, inner: OuterOptimizer, spool_dir: str = "") -> None:
        """Files go to `spool_dir` ("" : the system's temporary directory).

        They are unlinked at creation, so a crash leaves nothing behind.
        """
        self.inner = inner
        self.spool_dir = Path(spool_dir) if spool_dir else None
        self._files: dict[str, int] = {}
        """State key -> open file descriptor of its float32 values."""
        self._numel = 0
        self._scalars: StateDict = dict(inner.state_dict())
        """The inner optimizer's non-tensor state (`steps`), kept in memory
        (a fresh optimizer has no tensors yet)."""

    @property
    def name(self) -> str:
        """The wrapped optimizer's name (checkpoints stay interchangeable)."""
        return self.inner.name

    def step(self, params: torch.Tensor, pseudo_gradient: torch.Tensor) -> None:
        """One outer step, block by block (see the module docstring).

        The whole pseudo-gradient is checked first, so a NaN in the last
        block leaves every block, and the state, unchanged.
        """
        check_step_args(params, pseudo_gradient)
        self.step_blocks(params, lambda lo, hi: pseudo_gradient[lo:hi])

    def step_blocks(self, params: torch.Tensor, gradient: GradientBlocks) -> None:
        """One outer step whose pseudo-gradient is read a block at a time too.

        `gradient(lo, hi)` returns g[lo:hi] (float32; the step may overwrite
        it), for the same blocks `step` would slice, so the result is `step`'s
        to the bit. For a g that is never whole in RAM (a lean round's mean
        on disk, `coordinator.rounds.disk_step`): the caller must have checked
        all of g finite (a NaN in a later block would be refused only after
        the earlier blocks were stepped).
        """
        n = params.numel()
        if params.dim() != 1 or params.dtype != torch.float32:
            raise InvalidUpdateError("params must be a 1-D float32 tensor")
        if self._files and n != self._numel:
            raise InvalidUpdateError(
                f"params have {n} coordinates but the optimizer state on disk "
                f"has {self._numel}; both must describe the same model"
            )
        after: StateDict = {}
        held = tuple(self._files)  # keys a step creates are not read back in it
        for lo in range(0, n, BLOCK_COORDINATES):
            hi = min(n, lo + BLOCK_COORDINATES)
            self.inner.load_state_dict(self._read_block(held, lo, hi))
            self.inner.step(params[lo:hi], gradient(lo, hi))
            after = self.inner.state_dict()
            for key, value in after.items():
                if isinstance(value, torch.Tensor):
                    self._write(key, lo, value, n)
        self._numel = n
        self._scalars = {
            k: v for k, v in after.items() if not isinstance(v, torch.Tensor)
        }
        self.inner.load_state_dict(dict(self._scalars))  # drop the last block

    def state_dict(self) -> StateDict:
        """The whole state, read back from disk (one model-sized tensor per key)."""
        state = dict(self._scalars)
        for key in self._files:
            state[key] = self._read(key, 0, self._numel)
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore a whole state (a checkpoint, a reset): validated, then on disk."""
        self.inner.load_state_dict(state)  # the inner optimizer's own checks
        tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        sizes = {v.numel() for v in tensors.values()}
        if len(sizes) > 1:
            raise InvalidUpdateError(
                f"optimizer state tensors differ in length: {sorted(sizes)}"
            )
        self.close()
        self._numel = sizes.pop() if sizes else 0
        for key, value in tensors.items():
            self._write(key, 0, value.detach().to(torch.float32), self._numel)
        self._scalars = {
            k: v for k, v in state.items() if not isinstance(v, torch.Tensor)
        }
        self.inner.load_state_dict(dict(self._scalars))

    def close(self) -> None:
        """Close (and so free) the state files."""
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def _read_block(self, keys: tuple[str, ...], lo: int, hi: int) -> StateDict:
        state = dict(self._scalars)
        for key in keys:
            state[key] = self._read(key, lo, hi)
        return state

    def _read(self, key: str, lo: int, hi: int) -> torch.Tensor:
        values = np.empty(hi - lo, dtype=np.float32)
        view = memoryview(values.data).cast("B")
        done = 0
        while done < len(view):  # pread may return short counts
            got = os.preadv(self._files[key], [view[done:]], lo * 4 + done)
            if got <= 0:
                raise InvalidUpdateError(
                    f"optimizer state {key!r} on disk ended early at byte "
                    f"{lo * 4 + done}"
                )
            done += got
        return torch.from_numpy(values)

    def _write(self, key: str, lo: int, value: torch.Tensor, numel: int) -> None:
        fd = self._files.get(key)
        if fd is None:
            fd = self._files[key] = self._open(numel)
        data = memoryview(value.contiguous().numpy().data).cast("B")
        done = 0
        try:
            while done < len(data):
                done += os.pwrite(fd, data[done:], lo * 4 + done)
        except OSError as exc:
            raise TooLargeError(
                f"cannot write the outer optimizer state to disk ({exc.strerror}); "
                "free space in spool_dir or unset outer_state_on_disk"
            ) from exc

    def _open(self, numel: int) -> int:
        try:
            fd, path = tempfile.mkstemp(prefix="fedgrpc-outer-", dir=self.spool_dir)
            os.unlink(path)
            os.ftruncate(fd, numel * 4)
        except OSError as exc:
            raise TooLargeError(
                f"cannot keep the outer optimizer state on disk in "
                f"{self.spool_dir or tempfile.gettempdir()}: {exc}; free space "
                "there, set spool_dir, or unset outer_state_on_disk"
            ) from None
        log.info("outer_state_on_disk", bytes=numel * 4, dir=str(self.spool_dir or ""))
        return fd

    def __del__(self) -> None:
        self.close()
