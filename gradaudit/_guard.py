"""Calling code that is not trusted to behave: every call into the user's functions goes through
`Guard.wrap`, which turns whatever it does into an ordinary exception with a message that names the
function, announces the call to the parent process (so a hang can be timed out), and measures what
it printed (a torrent of output is an error, and never reaches the terminal).
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

__all__ = ["FLOOD_LIMIT", "Guard", "MESSAGE_LIMIT", "OutputDrain", "UserCodeError", "clean", "describe_exception"]

FLOOD_LIMIT = 1 << 20  # bytes a function may print during one call before it is an error
MESSAGE_LIMIT = 1000  # characters of a user-supplied text kept in a message


class UserCodeError(CodeUnderTestError):
    """The audited code raised, exited, or misbehaved; the message names the function."""


def clean(text, limit: int = MESSAGE_LIMIT, *, keep_newlines: bool = False) -> str:
    """Text from user code made safe for a terminal, a log line and JSON: control characters
    (ANSI escapes included) are shown escaped, and it is cut at `limit` characters."""
    try:
        text = str(text)
    except Exception:
        text = "<unprintable>"
    out = []
    for ch in text[: limit + 1]:
        o = ord(ch)
        if ch == "\n" and keep_newlines:
            out.append(ch)
        elif o < 0x20 or 0x7F <= o < 0xA0 or 0xD800 <= o < 0xE000 or ch in "\u2028\u2029\u202e\u202d\u200e\u200f":
            out.append(repr(ch)[1:-1] if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    s = "".join(out)
    return s if len(text) <= limit else s[:limit] + "…"


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
    """Wraps the user's functions. `emit(line)` tells the parent process about calls (None when
    running in-process); `output` measures printing (None: not measured)."""

    def __init__(self, emit=None, output: OutputDrain | None = None, *, convert_interrupt: bool = False,
                 flood_limit: int = FLOOD_LIMIT, verbose: bool = False):
        self.emit, self.output, self.convert_interrupt = emit, output, convert_interrupt
        self.flood_limit, self.verbose = flood_limit, verbose
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
        if self.emit:
            self.emit(f"C {fname}")
        before = self.output.total() if self.output else 0
        try:
            result = fn(*args, **kwargs)
        except SystemExit as e:
            raise UserCodeError(f"{fname} called sys.exit({e.code!r})") from None
        except KeyboardInterrupt as e:
            if not self.convert_interrupt:
                raise
            self._trace(fname, e)
            raise UserCodeError(f"{fname} raised KeyboardInterrupt") from None
        except UserCodeError:
            raise  # from a guarded function it called
        except BaseException as e:  # noqa: BLE001  (GeneratorExit, RecursionError, anything)
            self._trace(fname, e)
            from .sources import innermost  # in a notebook cell or a block of notes: say where, as the reader counts

            at = innermost(e)
            raise UserCodeError(f"{fname} raised {clean(describe_exception(e))}" + (f" at {at}" if at else "")) from None
        finally:
            if self.emit:
                self.emit("R")
        if self.output is not None:
            wrote = self.output.total() - before
            if wrote > self.flood_limit:
                raise UserCodeError(f"{fname} wrote {wrote / 1e6:.1f} MB to stdout/stderr during one call "
                                    f"(more than {self.flood_limit / 1e6:.1f} MB; the output is discarded)")
        return result

    def _trace(self, fname, e):
        if fname in self._traced:
            return
        self._traced.add(fname)
        text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        if self.emit:
            import json

            self.emit("X " + json.dumps({"function": fname, "traceback": clean(text, 20000, keep_newlines=True)}))
        elif self.verbose:
            print(clean(text, 20000, keep_newlines=True), file=sys.stderr)
