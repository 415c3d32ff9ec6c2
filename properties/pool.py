"""The worker processes of a run with `--workers N` (properties/session.py): each takes jobs and
appends its records to the run's results.jsonl; none outlives the run."""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Sequence

from reports.records import RecordSink

from .config import RunConfig
from .process import apply_precision, jax_cache_stats, prepare_process, stats_delta

__all__ = ["PoolBroken", "WorkersLost", "in_pool", "in_process"]


# ---- the worker pool -----------------------------------------------------------------------------
# Workers are spawned, not forked: torch and JAX start threads at import, and forking a process with
# threads can deadlock. Each worker imports the frameworks once, keeps its JAX compile cache for all
# the jobs it takes, and shares the persistent compilation cache on disk with the others.
#
# A worker never outlives the run: it leads a process group of its own (so that the run can kill it
# with whatever it started, and a terminal's Ctrl-C reaches the run alone, which decides), and it
# dies with its parent however the parent ends, kill -9 included (PR_SET_PDEATHSIG on Linux; a
# watching thread elsewhere).

_worker_sink: RecordSink | None = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Make this process end when `parent` does."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)
    if not armed:
        def watch():
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, name="gradaudit-parent-watch", daemon=True).start()


def _worker_init(results: str, cfg: RunConfig, parent: int) -> None:
    global _worker_sink
    _die_with_parent(parent)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run decides what an interrupt stops
    prepare_process(cfg)
    apply_precision(cfg)
    _worker_sink = RecordSink(Path(results))


def _worker_run(label, fn, cfg, done):
    t0 = time.perf_counter()
    before = jax_cache_stats()
    records = fn(_worker_sink, cfg, done)
    return label, records, time.perf_counter() - t0, stats_delta(before, jax_cache_stats())


class PoolBroken(Exception):
    """A worker process died: `unfinished` are the jobs that did not come back."""

    def __init__(self, unfinished: list, why: str):
        super().__init__(why)
        self.unfinished, self.why = unfinished, why


class WorkersLost(RuntimeError):
    """Worker processes kept dying; the message lists the jobs that did not finish."""


def _kill_workers(procs) -> None:
    """SIGKILL each worker and its process group; wait for them."""
    for p in procs:
        for kill in (os.kill, os.killpg):
            with contextlib.suppress(OSError):
                kill(p.pid, signal.SIGKILL)
    for p in procs:
        p.join(5)


def _exit_text(procs) -> str:
    """How the worker that broke the pool ended (the pool stops the others with SIGTERM after it)."""
    codes = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
    codes.sort(key=lambda c: c == -signal.SIGTERM)
    if not codes:
        return "it ended abruptly"
    code = codes[0]
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def in_pool(jobs: Sequence[tuple], cfg: RunConfig, done, results: Path, workers: int, jax_stats: list):
    ctx = mp.get_context("spawn")
    before = set(mp.active_children())
    pool = ProcessPoolExecutor(max_workers=min(workers, max(len(jobs), 1)), mp_context=ctx,
                               initializer=_worker_init, initargs=(str(results), cfg, os.getpid()))
    procs: list = []
    clean_exit = False
    try:
        futures = {pool.submit(_worker_run, label, fn, cfg, done): (label, fn) for label, fn in jobs}
        procs = [p for p in mp.active_children() if p not in before]
        pending = set(futures)
        for f in as_completed(futures):
            try:
                label, records, seconds, stats = f.result()
            except BrokenProcessPool:
                _kill_workers(procs)
                raise PoolBroken([futures[g] for g in futures if g in pending],
                                  f"a worker process died ({_exit_text(procs)})") from None
            pending.discard(f)
            jax_stats.append(stats)
            yield label, records, seconds
        clean_exit = True
    finally:
        if not clean_exit:  # interrupted, or a job raised: no worker goes on writing
            _kill_workers(procs or [p for p in mp.active_children() if p not in before])
        pool.shutdown(wait=clean_exit, cancel_futures=True)


def in_process(jobs: Sequence[tuple], cfg: RunConfig, done, results: Path, jax_stats: list):
    prepare_process(cfg)  # one torch thread, JAX's persistent compile cache
    apply_precision(cfg)
    before = jax_cache_stats()
    try:
        with RecordSink(results) as sink:
            for label, fn in jobs:
                t0 = time.perf_counter()
                yield label, fn(sink, cfg, done), time.perf_counter() - t0
    finally:
        jax_stats.append(stats_delta(before, jax_cache_stats()))
