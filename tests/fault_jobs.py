"""Faults for tests/test_faults.py, injected into a real `gradaudit` process from outside the product:

    python tests/fault_jobs.py [--disk-full-after BYTES] [--killer-job] -- ARGS...

runs `gradaudit ARGS...` (gradaudit.cli.main) with

- `--disk-full-after BYTES`: every write to a results.jsonl of this process beyond BYTES in all
  fails with ENOSPC, after writing what still "fits" (a short write, as a full disk does);
- `--killer-job`: `run` gets one more job, first in line, that SIGKILLs the worker process running
  it (`--workers N`): a pool worker lost as the OOM killer would take it.
"""
from __future__ import annotations

import errno
import functools
import os
import signal
import sys


def kill_own_worker(sink, cfg, done=()):
    os.kill(os.getpid(), signal.SIGKILL)


def cheap_job(sink, cfg, done=()):
    """A job that finishes at once without a record (the killer's neighbour in a pool)."""
    return []


def disk_full_after(budget: int) -> None:
    """Make os.write to a results.jsonl fail with ENOSPC once `budget` bytes went there."""
    real = os.write
    state = {"left": budget}

    def write(fd, data):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if not name.endswith("results.jsonl"):
            return real(fd, data)
        if state["left"] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, bytes(data[: state["left"]]))
        state["left"] -= n
        return n

    os.write = write


def main(argv: list[str]) -> int:
    sep = argv.index("--")
    opts, args = argv[:sep], argv[sep + 1:]
    if "--disk-full-after" in opts:
        disk_full_after(int(opts[opts.index("--disk-full-after") + 1]))
    if "--killer-job" in opts:
        import properties.session as session

        catalogue_jobs = session.catalogue_jobs

        def with_killer(ops, dtypes):
            return [("killer", functools.partial(kill_own_worker)), *catalogue_jobs(ops, dtypes)]

        session.catalogue_jobs = with_killer
    from gradaudit.cli import main as gradaudit_main

    return gradaudit_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
