"""What the command line says on stderr and stdout, and how it stops: one line per message, quiet
when the reader went away (`| head`), SIGTERM and SIGHUP handled as Ctrl-C is (gradaudit/cli.py)."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback

__all__ = ["Interrupted", "handled_signals", "internal_error", "out", "say", "show_warning", "silence_stdout"]


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


_stopping = {"signum": None, "lost": False}


def interrupt(signum, frame):
    if _stopping["signum"] is not None:
        return  # once: a second signal while the run stops its workers would cut that short
    _stopping["signum"] = signum
    raise Interrupted(signum)


def redeliver(signum, frame):
    if _stopping["lost"]:
        _stopping["lost"] = False
        raise Interrupted(_stopping["signum"])


def unraisable(u) -> None:
    """An exception Python had to drop (raised in a gc callback or a __del__): when it is our
    Interrupted, it is raised again 50 ms later (SIGALRM), after that callback."""
    if isinstance(u.exc_value, Interrupted) and _stopping["signum"] is not None:
        _stopping["lost"] = True
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        return
    sys.__unraisablehook__(u)


@contextlib.contextmanager
def handled_signals():
    """SIGTERM (CI's cancel and timeout) and SIGHUP (a closed terminal) stop a command as Ctrl-C
    (SIGINT) does: an Interrupted exception, the same for the three, raised once."""
    try:
        old = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        old[signal.SIGALRM] = signal.signal(signal.SIGALRM, redeliver)
    except ValueError:  # not the main thread (main() called from a library): leave them be
        old = {}
    hook = sys.unraisablehook
    if old:
        sys.unraisablehook = unraisable
    _stopping.update(signum=None, lost=False)
    try:
        yield
    finally:
        if old:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sys.unraisablehook = hook
        for s, h in old.items():
            signal.signal(s, h)


def show_warning(message, category, filename, lineno, file=None, line=None):
    from reports.text import clean

    say(f"warning: {clean(message, 2000)}")
