"""How numbers and text are written on the page and on the terminal.

`clean` is the product's one escaping function for text that someone else controls (a function
name, an exception message, any string of a results file given to `gradaudit report`): whatever
prints it to a terminal, a log line or a one-line error goes through it.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["MESSAGE_LIMIT", "clean", "fmt_duration", "fmt_num", "fmt_value", "short"]

MESSAGE_LIMIT = 1000  # characters of a user-supplied text kept in a message

# Shown escaped, never emitted: C0 and C1 controls and DEL (ANSI escape sequences start with ESC or
# CSI, a C1 control), lone surrogates, the line and paragraph separators, and every Unicode bidi
# control (embeddings and overrides U+202A-202E, isolates U+2066-2069, the marks U+200E/F and the
# Arabic letter mark U+061C): each can make a terminal show text other than what is there.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unsafe(ch: str) -> bool:
    o = ord(ch)
    return o < 0x20 or 0x7F <= o < 0xA0 or 0xD800 <= o < 0xE000 or ch in "\u2028\u2029" or ch in _BIDI


def clean(text, limit: int | None = MESSAGE_LIMIT, *, keep_newlines: bool = False) -> str:
    """`text` made safe for a terminal, a log line and JSON: control characters (ANSI escapes
    included), bidi controls and separators are shown escaped (`\\x1b`, `\\u202e`), and it is cut
    at `limit` characters (None: not cut). `keep_newlines` lets "\\n" through (a traceback)."""
    try:
        text = str(text)
    except Exception:
        text = "<unprintable>"
    head = text if limit is None else text[: limit + 1]
    out = []
    for ch in head:
        if ch == "\n" and keep_newlines or not _unsafe(ch):
            out.append(ch)
        else:
            o = ord(ch)
            out.append(repr(ch)[1:-1] if o < 0x100 else f"\\u{o:04x}")
    s = "".join(out)
    return s if limit is None or len(text) <= limit else s[:limit] + "…"


def fmt_num(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float, np.number)):
        return str(x)
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "−inf"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 1, 0)}e}"


def fmt_duration(s) -> str:
    if s is None:
        return "–"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def fmt_value(v: float, digits: int) -> str:
    """An array element, with as many significant digits as asked."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "−inf"
    return f"{v:.{digits}g}"


def short(text, n: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"
