"""An audit's lanes: two searches at once in one judge, each with an audit child of its own (#14).

The judge and its child take turns: while the child runs the user's functions and the frameworks'
VJPs, the judge waits; while the judge draws, compares and records, the child waits. Alone, one
search keeps one core busy out of the two processes. With a second lane, a thread of the judge
checks the next function with a second child while the first lane's child computes: one judge
process (one interpreter lock, so the judge's own work is no more parallel than before), and the
children's work beside it (docs/performance.md, "The audit child: what isolation costs").

Each lane takes the next job from one queue and owns its child outright: no request, handle or
random stream crosses lanes (properties/execute.py keeps the stream and the plan per thread). A
job's records are written when its lane has checked it whole, so results.jsonl holds the same
records, in the order the jobs finished. A signal stops every lane: the other lanes' children are
killed at once, and nothing a lane finds after the signal is recorded (its function was not checked
to the end). An internal error in a lane stops the audit as it would stop one search.

The price: each child imports the audited sources, so with two lanes a file's import-time code runs
twice: only where the first import was quick (`more_children`), and `--children 1` keeps one child.
"""
from __future__ import annotations

import collections
import os
import signal
import threading
import warnings

from ._remote import Child, ChildStartError

__all__ = ["LANE_IMPORT_SECONDS", "default_children", "more_children", "run_lanes"]


def default_children(workers: int) -> int:
    """Children per judge process: two where a core would otherwise wait (one worker process on a
    machine with two or more cores), else one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 2 if workers == 1 and cores >= 2 else 1


LANE_IMPORT_SECONDS = 1.0  # the longest import of the sources another lane's child repeats


def more_children(first: Child, wanted: int, functions: int) -> list[Child]:
    """The children of the other lanes, started (they start while the first lane checks): `wanted`
    lanes in all, one per function at most, none where importing the sources took the first child a
    second or more (a notebook that trains models in its cells would train them again)."""
    out: list[Child] = []
    for _ in range(min(wanted, functions) - 1 if first.load_seconds < LANE_IMPORT_SECONDS else 0):
        more = Child(first.conf, first.sources, verbose=first.verbose)
        more.load_errors = dict(first.load_errors)  # a source that failed to import is not tried again
        try:
            more.begin()
        except ChildStartError:
            break  # the lanes there are take its jobs
        out.append(more)
    return out


class _Gate:
    """The lanes' record sink: one writer at a time, and closed once the audit is cut short."""

    def __init__(self, sink, cut: threading.Event, lock: threading.Lock):
        self.sink, self.cut, self.lock = sink, cut, lock

    def write(self, rec: dict) -> None:
        with self.lock:
            if not self.cut.is_set():
                self.sink.write(rec)


def run_lanes(children: list[Child], jobs: list, check, sink) -> list[dict]:
    """`check(child, job, sink) -> records` for every job, each lane (a child; the first is served by
    this thread, the others by threads of their own) taking the next job; the records in the jobs'
    order. A lane whose child cannot start takes no job; an exception in a lane ends the audit once
    the other lanes' jobs under way are done; one in this thread (a signal's Interrupted) at once."""
    if len(children) == 1:
        return _run_lanes(children, jobs, check, sink)
    with warnings.catch_warnings():  # (this thread's, before the others start and after they end)
        # Hypothesis warns when a strategy leaves the global `random` other than it found it. Each search
        # seeds and restores that generator around every example, so another lane's search changes it
        # under this one's draws: a race its check narrows but cannot close (hypothesis/control.py). Our
        # strategies draw nothing from `random`: with one lane the warning never shows.
        warnings.filterwarnings("ignore", message=RANDOM_IN_STRATEGY)
        return _run_lanes(children, jobs, check, sink)


RANDOM_IN_STRATEGY = "Do not use the `random` module inside strategies"


def _run_lanes(children: list[Child], jobs: list, check, sink) -> list[dict]:
    queue, lock = collections.deque(jobs), threading.Lock()
    stop, cut = threading.Event(), threading.Event()  # no new job; nothing more recorded
    gate, done, failed, ready = _Gate(sink, cut, lock), {}, [], set()

    def lane(child: Child, first: bool) -> None:
        try:
            if not first:
                child.ensure()
                ready.add(id(child))
            while not stop.is_set():
                with lock:
                    if not queue:
                        return
                    i, job = len(jobs) - len(queue), queue.popleft()
                done[i] = check(child, job, gate)
        except ChildStartError:
            if first:
                raise
            # (a second child that cannot start: the other lanes take its jobs)
        except BaseException as e:  # noqa: BLE001  a helper's: this thread raises it once the others are done
            if first:
                raise
            failed.append(e)
            stop.set()

    helpers = [threading.Thread(target=lane, args=(c, False), name=f"gradaudit-lane-{k + 1}", daemon=True)
               for k, c in enumerate(children[1:])]
    for t in helpers:
        t.start()
    try:
        lane(children[0], True)
        for c in children[1:]:
            if id(c) not in ready:  # still starting once every job is taken (an import that hangs there): not waited for
                _kill(c)
        for t in helpers:
            t.join()
    except BaseException:
        stop.set()
        cut.set()  # what the other lanes find from now on was cut short: not recorded
        for c in children[1:]:
            _kill(c)
        for t in helpers:
            t.join(timeout=30)
        raise
    if failed:
        raise failed[0]
    return [r for i in sorted(done) for r in done[i]]


def _kill(child: Child) -> None:
    """SIGKILL a lane's child from another thread, leaving its descriptors to the lane (which reads
    end-of-file, loses the child and closes it): closing them here could hand their numbers to a file
    this thread opens next while the lane still writes to them."""
    proc = child.proc
    if proc is not None:
        try:
            os.killpg(proc.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
