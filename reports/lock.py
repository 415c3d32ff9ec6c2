"""One writer per report folder: `ReportLock`, an `fcntl.flock` on `<folder>/.lock` holding the
writer's pid, taken by a run and by `gradaudit report` before they change anything there."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["LOCK_NAME", "ReportBusy", "ReportLock"]


# ---- one writer per report folder ---------------------------------------------------------------

LOCK_NAME = ".lock"


class ReportBusy(RuntimeError):
    """Another process holds the report folder's lock; `pid` is its process id (None: unknown)."""

    def __init__(self, folder: Path, pid: int | None):
        self.folder, self.pid = folder, pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"report folder {str(folder)!r} is in use by another gradaudit run ({who}); "
                         f"wait for it (--wait) or choose another --report")


class ReportLock:
    """An exclusive `fcntl.flock` on `<folder>/.lock`, which holds the pid of the process that has it.
    The kernel releases it when that process ends, however it ends (kill -9 included): a stale lock
    file never blocks. `wait=False`: raise ReportBusy at once when another process holds it;
    `wait=True`: call `on_wait(pid)`, then block until it is free. Re-entrant within a process (the
    CLI holds it across a run and its report; the run takes it again)."""

    _held: dict[str, list] = {}  # real path of the folder -> [descriptor, depth]

    def __init__(self, folder: str | os.PathLike, *, wait: bool = False, on_wait=None):
        self.folder, self.wait, self.on_wait = Path(folder), wait, on_wait
        self._key: str | None = None

    def acquire(self) -> "ReportLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.folder)
        if key in self._held:
            self._held[key][1] += 1
            self._key = key
            return self
        fd = os.open(os.path.join(key, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not self.wait:
                    raise ReportBusy(self.folder, _pid_in(fd)) from None
                if self.on_wait is not None:
                    self.on_wait(_pid_in(fd))
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._held[key] = [fd, 1]
        self._key = key
        return self

    def release(self) -> None:
        if self._key is None:
            return
        entry = self._held[self._key]
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[self._key]
            with contextlib.suppress(OSError):
                os.ftruncate(entry[0], 0)  # no stale pid for the next reader
            os.close(entry[0])  # closing the descriptor releases the lock
        self._key = None

    def __enter__(self) -> "ReportLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _pid_in(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
