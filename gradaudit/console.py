"""What the command line says on stderr and stdout, and how it stops: one line per message, quiet
when the reader went away (`| head`), SIGTERM and SIGHUP handled as Ctrl-C is — one mechanism for the
CLI (gradaudit/cli.py), an audit and its --workers processes (gradaudit/audit.py)."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback

__all__ = ["Interrupted", "handled_signals", "internal_error", "out", "raise_if_interrupted", "say", "show_warning",
           "silence_stdout"]


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, stopping a run as Ctrl-C does; exit status 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def internal_error(e: BaseException, verbose: bool, doing: str = "") -> None:
    """gradaudit's own failure: one line (the traceback first, with --verbose). `doing`: what failed."""
    from reports.text import clean

    if verbose:
        say("".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip())
    text = clean(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, 600)
    say(f"internal error: {doing}{text}" + ("" if verbose else " (--verbose shows the traceback)"))


def say(line: str) -> None:
    """One line on stderr, prefixed."""
    try:
        print(f"gradaudit: {line}", file=sys.stderr)
    except (BrokenPipeError, ValueError):
        pass


def out(text: str) -> None:
    """Print to stdout; a reader that went away (`| head`) ends the printing quietly, not the command."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()


def silence_stdout() -> None:
    # what the interpreter would flush at exit goes nowhere, instead of a second BrokenPipeError
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# ---- how a command stops: the one signal mechanism of the CLI, the audit and its --workers ------------

_stopping = {"signum": None, "lost": False, "depth": 0}


def interrupt(signum, frame):
    if _stopping["signum"] is not None:
        return  # once: a second signal while the run stops its workers and children would cut that short
    _stopping["signum"] = signum
    raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """A stop a signal asked for whose Interrupted Python swallowed (raised in a __del__ or a weakref
    callback): raised here. The audit calls it before every request to its child; SIGALRM, 50 ms
    after the swallowing, wherever the run is. In a thread other than the main one (which the signal
    interrupted itself), any stop asked for is raised."""
    if _stopping["lost"]:
        _stopping["lost"] = False
        raise Interrupted(_stopping["signum"])
    if _stopping["signum"] is not None and threading.current_thread() is not threading.main_thread():
        raise Interrupted(_stopping["signum"])  # a lane of the audit (gradaudit/_lanes.py) stops too


def redeliver(signum, frame):
    raise_if_interrupted()


def unraisable(u) -> None:
    """An exception Python had to drop: when it is the stop a signal asked for, it is raised again
    (SIGALRM in 50 ms, or the next call into an audit child, whichever comes first)."""
    if isinstance(u.exc_value, KeyboardInterrupt) and _stopping["signum"] is not None:
        _stopping["lost"] = True
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        return
    sys.__unraisablehook__(u)


@contextlib.contextmanager
def handled_signals():
    """SIGINT (Ctrl-C), SIGTERM (CI's cancel and timeout) and SIGHUP (a closed terminal) stop a command,
    an audit or a --workers process's jobs the same way: an `Interrupted` (a KeyboardInterrupt carrying
    the signal: the CLI exits 128 + its number, 130 / 143 / 129), raised once, never lost, so that every
    `finally` and context manager on the way out runs (an audit child and all it started are killed,
    the summary is printed, nothing is recorded against the user's function). Nested uses (the CLI's
    around an audit's) are one: only the outermost installs and restores the handlers."""
    if _stopping["depth"]:
        _stopping["depth"] += 1
        try:
            yield
        finally:
            _stopping["depth"] -= 1
        return
    try:
        old = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        old[signal.SIGALRM] = signal.signal(signal.SIGALRM, redeliver)
    except ValueError:  # not the main thread (main() called from a library): leave them be
        old = {}
    hook = sys.unraisablehook
    if old:
        sys.unraisablehook = unraisable
    _stopping.update(signum=None, lost=False, depth=1)
    try:
        yield
        raise_if_interrupted()  # a stop swallowed at the very end is still a stop
    finally:
        _stopping["depth"] = 0
        if old:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sys.unraisablehook = hook
        for s, h in old.items():
            signal.signal(s, h)


def show_warning(message, category, filename, lineno, file=None, line=None):
    from reports.text import clean

    say(f"warning: {clean(message, 2000)}")
