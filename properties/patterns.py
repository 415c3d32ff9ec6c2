"""Name the shape of a wrong gradient, when it has a recognisable one."""
from __future__ import annotations

import re

import numpy as np


def _close(a, b, tol=1e-6) -> bool:
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), 1e-300)
    return bool(np.abs(a - b).max(initial=0.0) <= tol * scale)


def _round_factor(c: float) -> str | None:
    """'1/N', 'N' or 'p/q' for a factor a derivation plausibly gets wrong by; None for an arbitrary one."""
    for q in range(1, 65):
        p = round(c * q)
        if p != 0 and abs(c * q - p) < 1e-6 * abs(p) and abs(p) <= 64:
            return f"{p}" if q == 1 else f"{p}/{q}"
    return None


def recognise(ref: np.ndarray, oracle: np.ndarray, *, name: str = "grad", seq_axis: int | None = None
              ) -> tuple[str, str] | None:
    """(pattern, explanation) for the reference gradient `ref` against the correct `oracle`."""
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(oracle, dtype=np.float64)
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    if np.abs(b).max(initial=0.0) == 0:
        return None
    if np.abs(a).max(initial=0.0) == 0:
        return "zero_gradient", f"{name} is identically zero"
    if _close(a, -b):
        return "sign_flip", f"{name} has the wrong sign"
    c = float(np.vdot(a, b) / np.vdot(b, b))
    # a one-element gradient is always "a multiple" of the right one: only a round factor says anything
    factor = _round_factor(c)
    if a.size == 1 and factor is not None and not re.fullmatch(r"-?\d+|-?1/\d+", factor):
        factor = None  # one number against another: only an integer or 1/N factor is telling
    if _close(a, c * b, 1e-5) and factor not in (None, "1"):
        return "constant_factor", f"{name} is off by a constant factor {factor} (ref = {c:.6g} x oracle)"
    if a.ndim == 2 and a.shape[0] == a.shape[1] and a.shape[0] > 1 and _close(a, b.T):
        return "transpose", f"{name} is the transpose of the right gradient"
    err = np.abs(a - b)
    scale = max(np.abs(b).max(), 1e-300)
    # error confined to one index along one axis: a term missing at one timestep/row/channel
    axes = [seq_axis] if seq_axis is not None else range(a.ndim)
    for ax in axes:
        if a.shape[ax] < 2:
            continue
        per = err.max(axis=tuple(i for i in range(a.ndim) if i != ax))
        wrong = np.flatnonzero(per > 1e-6 * scale)
        if len(wrong) == 1:
            label = "missing_timestep" if ax == seq_axis or (a.ndim == 3 and ax == 1) else "wrong_axis"
            return label, f"{name} is wrong only at index {int(wrong[0])} of axis {ax}"
    # summed over the wrong axis: the reference is constant along an axis where the truth varies
    for ax in range(a.ndim):
        if a.shape[ax] > 1 and _close(a, np.broadcast_to(a.take([0], axis=ax), a.shape), 1e-9) \
                and not _close(b, np.broadcast_to(b.take([0], axis=ax), b.shape), 1e-6):
            return "wrong_axis", f"{name} is constant along axis {ax}, the right gradient is not (a sum over the wrong axis?)"
    return None
