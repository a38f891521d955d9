"""Where the disk spool lives: one locked directory per coordinator run.

Rules that need every client's update (median, trimmed mean, ...) hold each
update in a file (`fedgrpc.aggregate.spool`). Those files must not outlive
the run that wrote them, even when it crashes, so the layout is:

    <spool_dir>/                  default <tmp>/fedgrpc-spool-<uid>, mode 0700
      run-<random>/               one per live coordinator (SpoolDirectory)
        .lock                     flock-ed for the run's whole life
        round-<id>/u<n>.f32       one round's updates (SpoolAccumulator)

A run holds an exclusive `flock` on its `.lock`; the kernel drops it when the
process dies, however it dies. At start-up every `run-*` whose lock can be
taken belongs to a dead run and is removed, so coordinators that share a
spool directory never delete each other's live rounds. A new run directory
is locked under a hidden name and only then renamed to `run-*`, so a cleaner
never sees it unlocked.

The directory must be a real directory owned by this user: in a shared /tmp
another user could otherwise pre-create it (or a symlink) and read or swap
the updates.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
from pathlib import Path
from types import TracebackType

from fedgrpc.aggregate.spool import SpoolAccumulator
from fedgrpc.errors import ConfigError
from fedgrpc.log import get_logger

log = get_logger(__name__)

RUN_PREFIX = "run-"
_NEW_PREFIX = ".new-"
_LOCK_NAME = ".lock"


def default_spool_root() -> Path:
    """`<tmp>/fedgrpc-spool-<uid>`: per user, so users never share one."""
    return Path(tempfile.gettempdir()) / f"fedgrpc-spool-{os.getuid()}"


class SpoolDirectory:
    """One coordinator run's spool directory; opens a spool per round.

    Create it once at start (it cleans up after crashed runs), call
    `open_round` for each round whose aggregator needs every update, and
    `close` at shutdown (it removes everything the run wrote).
    """

    def __init__(self, root: Path | None = None) -> None:
        """Prepare `root` (default `default_spool_root()`), clean it, lock a run dir.

        Raises:
            ConfigError: `root` is not a directory this user owns, or cannot
                be created.
        """
        self.root = default_spool_root() if root is None else Path(root)
        prepare_spool_root(self.root)
        removed = remove_stale_runs(self.root)
        fresh = Path(tempfile.mkdtemp(prefix=_NEW_PREFIX, dir=self.root))
        self._lock_fd: int | None = _lock(fresh / _LOCK_NAME, blocking=True)
        self.path = self.root / (RUN_PREFIX + fresh.name.removeprefix(_NEW_PREFIX))
        fresh.rename(self.path)
        log.info("spool_opened", path=str(self.path), stale_runs_removed=removed)

    def open_round(
        self, round_id: int, num_coordinates: int, max_updates: int
    ) -> SpoolAccumulator:
        """A fresh per-client spool for round `round_id` (see `SpoolAccumulator`).

        Raises:
            ConfigError: the directory was closed, or the round's spool exists.
        """
        if self._lock_fd is None:
            raise ConfigError(f"the spool directory {self.path} was closed")
        return SpoolAccumulator(
            self.path / f"round-{round_id}", num_coordinates, max_updates
        )

    def close(self) -> None:
        """Remove the run's directory and release its lock (idempotent)."""
        if self._lock_fd is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock_fd)  # closing the descriptor drops the flock
        self._lock_fd = None
        log.info("spool_closed", path=str(self.path))

    def __enter__(self) -> SpoolDirectory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def remove_stale_runs(root: Path) -> int:
    """Remove every run directory under `root` whose owner died; returns how many.

    A directory is stale when its `.lock` can be locked: a live run holds it.
    Hidden directories still being created are left alone (a run that died in
    that instant leaves one empty directory behind, never an update).
    """
    removed = 0
    for entry in sorted(root.iterdir()):
        if not entry.name.startswith(RUN_PREFIX) or not entry.is_dir():
            continue
        lock_path = entry / _LOCK_NAME
        if not lock_path.exists():
            continue
        fd = _lock(lock_path, blocking=False)
        if fd is None:  # held: a live run
            continue
        try:
            shutil.rmtree(entry, ignore_errors=True)
        finally:
            os.close(fd)
        removed += 1
        log.info("spool_stale_run_removed", path=str(entry))
    return removed


def _lock(path: Path, *, blocking: bool) -> int | None:
    """Open `path` and take an exclusive flock; None if another process holds it."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def prepare_spool_root(root: Path) -> None:
    """Create `root` (0700) and refuse one this user does not own, or a symlink.

    Called at start for every configured `spool_dir`, not only the spool's:
    staged and on-disk sums put files there too, and a directory that is
    missing or someone else's must stop the coordinator with a clear error,
    not fail each client's push in the middle of a round.

    Raises:
        ConfigError: it cannot be created, is not a plain directory, or
            belongs to another user.
    """
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(root)
    except OSError as exc:
        raise ConfigError(
            f"spool_dir={str(root)!r} cannot be created ({exc.strerror}); choose "
            "a writable directory with room for clients x model size bytes"
        ) from exc
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            f"spool_dir={str(root)!r} is not a plain directory (a symlink or a "
            "file); choose a directory of your own"
        )
    if info.st_uid != os.getuid():
        raise ConfigError(
            f"spool_dir={str(root)!r} belongs to uid {info.st_uid}, not to this "
            f"process (uid {os.getuid()}); its owner could read or replace client "
            "updates; choose a directory of your own"
        )
