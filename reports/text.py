"""How numbers and text are written on the page."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["fmt_duration", "fmt_num", "fmt_value", "short"]


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
