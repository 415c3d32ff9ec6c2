"""Calling code that is not trusted to behave: every call into the user's functions goes through
`Guard.call`, which turns whatever it does into an ordinary exception with a message that names the
function, and measures what it printed (a torrent of output is an error, and never reaches the
terminal). Used in the audit child (gradaudit/_child.py) and by gradaudit.check in-process.
"""
from __future__ import annotations

import fcntl
import functools
import os
import sys
import termios
import threading
import traceback

from properties.verdict import CodeUnderTestError
from reports.text import MESSAGE_LIMIT, clean  # the one escaping function, re-exported

__all__ = ["FLOOD_LIMIT", "Guard", "MESSAGE_LIMIT", "OutputDrain", "UserCodeError", "clean", "describe_exception"]

FLOOD_LIMIT = 1 << 20  # bytes a function may print during one call before it is an error


class UserCodeError(CodeUnderTestError):
    """The audited code raised, exited, or misbehaved; the message names the function."""


def describe_exception(e: BaseException) -> str:
    try:
        msg = str(e)
    except Exception:
        msg = "<exception whose str() raised>"
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


class OutputDrain:
    """File descriptors 1 and 2 of this process, redirected into a pipe that a thread empties,
    counting the bytes and keeping the first `keep` of them. The terminal never sees them."""

    def __init__(self, keep: int = 4096):
        self.count = 0
        self.head = bytearray()
        self.keep = keep
        r, w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(w, 1)
        os.dup2(w, 2)
        os.close(w)
        self._r = r
        threading.Thread(target=self._drain, name="gradaudit-output-drain", daemon=True).start()

    def _drain(self):
        while True:
            try:
                data = os.read(self._r, 1 << 16)
            except OSError:
                return
            if not data:
                return
            if len(self.head) < self.keep:
                self.head += data[: self.keep - len(self.head)]
            self.count += len(data)

    def total(self) -> int:
        """Bytes written so far, including those still in the pipe."""
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
        try:
            buf = bytearray(4)
            fcntl.ioctl(self._r, termios.FIONREAD, buf)
            pending = int.from_bytes(buf, sys.byteorder)
        except OSError:
            pending = 0
        return self.count + pending


class Guard:
    """Wraps the user's functions. `output` measures printing (None: not measured); the traceback of
    the last failure is kept in `last_traceback` (the audit child sends it to the parent, which
    shows it with --verbose); `verbose` prints it here instead (gradaudit.check in a test)."""

    def __init__(self, output: OutputDrain | None = None, *, convert_interrupt: bool = False,
                 flood_limit: int = FLOOD_LIMIT, verbose: bool = False):
        self.output, self.convert_interrupt = output, convert_interrupt
        self.flood_limit, self.verbose = flood_limit, verbose
        self.last_traceback: str | None = None
        self._traced: set[str] = set()

    def wrap(self, fn, fname: str):
        if getattr(fn, "__gradaudit_guarded__", False):
            return fn
        guard = self

        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            return guard.call(fn, fname, args, kwargs)

        guarded.__gradaudit_guarded__ = True
        return guarded

    def call(self, fn, fname, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.last_traceback = None  # a failure without one (sys.exit) must not carry an earlier call's
        before = self.output.total() if self.output else 0
        try:
            result = fn(*args, **kwargs)
        except SystemExit as e:
            raise UserCodeError(f"{fname} called sys.exit({clean(repr(e.code), 200)})") from None
        except KeyboardInterrupt as e:
            if not self.convert_interrupt:
                raise
            self.trace(fname, e)
            raise UserCodeError(f"{fname} raised KeyboardInterrupt") from None
        except UserCodeError:
            raise  # from a guarded function it called
        except BaseException as e:  # noqa: BLE001  (GeneratorExit, RecursionError, anything)
            self.trace(fname, e)
            documents = sys.modules.get("gradaudit.sources")  # a notebook's cells, notes' blocks: say where
            at = documents.innermost(e) if documents is not None else None
            raise UserCodeError(f"{fname} raised {clean(describe_exception(e))}" + (f" at {at}" if at else "")) from None
        if self.output is not None:
            wrote = self.output.total() - before
            if wrote > self.flood_limit:
                raise UserCodeError(f"{fname} wrote {wrote / 1e6:.1f} MB to stdout/stderr during one call "
                                    f"(more than {self.flood_limit / 1e6:.1f} MB; the output is discarded)")
        return result

    def trace(self, fname, e) -> None:
        """Keep (and with `verbose`, print once per function) the traceback of `e`."""
        try:
            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        except Exception:  # a hostile __str__ or a broken frame
            text = f"{type(e).__name__} (no traceback available)"
        self.last_traceback = clean(text, 20000, keep_newlines=True)
        if self.verbose and fname not in self._traced:
            self._traced.add(fname)
            print(self.last_traceback, file=sys.stderr)
