"""Colluding attackers share their honest updates through a per-run directory.

ALIE and IPM are omniscient attacks: they need the round's benign mean (and
standard deviation). The simulator does not let attackers read other
clients' updates; each attacker trains honestly, and the attackers of one
attack estimate the benign statistics from their own honest pseudo-gradients
(Baruch et al. 2019 make the same assumption, sec. 3: the attackers' own
data are a sample of the benign distribution). They exchange them as files:
one `r<round>-c<index>.pt` per attacker and round, written atomically
(temporary name, then rename), in a directory the launcher creates under the
run's scratch directory and deletes with it.

Every wait is bounded: an attacker that does not share within `wait_s` (it
sat out the round, or crashed) is left out of the estimate, which then
rests on fewer updates; never on none, since the caller's own is always in.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from fedgrpc.log import get_logger

log = get_logger(__name__)
POLL_S = 0.02


class Colluders:
    """One attacker's side of the exchange with the other members of its attack."""

    def __init__(
        self, directory: Path, index: int, members: tuple[int, ...], wait_s: float
    ) -> None:
        """`index` is this attacker's client index; `members` all of them (it too)."""
        self.directory = directory
        self.index = index
        self.members = tuple(sorted(members))
        self.wait_s = wait_s

    def _path(self, round_id: int, index: int) -> Path:
        return self.directory / f"r{round_id}-c{index}.pt"

    def exchange(self, round_id: int, honest: torch.Tensor) -> torch.Tensor:
        """Share `honest`, then return every member's honest update, stacked.

        Returns a [k, d] float32 tensor, rows in member order (so every
        member computes the same statistics, bit for bit), k <= members.
        """
        self._share(round_id, honest)
        deadline = time.monotonic() + self.wait_s
        while True:
            waiting = [i for i in self.members if not self._path(round_id, i).exists()]
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        if waiting:
            log.warning("colluders_missing", round=round_id, missing=waiting)
        rows = [honest if i == self.index else self._load(round_id, i)
                for i in self.members if i not in waiting]  # fmt: skip
        return torch.stack([row for row in rows if row is not None])

    def _share(self, round_id: int, honest: torch.Tensor) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self._path(round_id, self.index)
        temporary = target.with_suffix(".tmp")
        torch.save(honest.clone(), temporary)
        os.replace(temporary, target)
        # Nobody reads our shares below r - 1 any more: we got here after
        # reading every member's r - 1 share, and each member made that share
        # only after its round r - 2 exchange was over.
        for old in self.directory.glob(f"r*-c{self.index}.pt"):
            if int(old.name[1:].split("-", 1)[0]) < round_id - 1:
                old.unlink(missing_ok=True)

    def _load(self, round_id: int, index: int) -> torch.Tensor | None:
        try:
            loaded: torch.Tensor = torch.load(
                self._path(round_id, index), weights_only=True
            )
        except FileNotFoundError:  # deleted after a missed round: leave it out
            return None
        return loaded
