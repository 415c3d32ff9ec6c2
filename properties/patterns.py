"""Name the shape of a wrong gradient, when it has a recognisable one. The only place that names
one: the record carries the name, the case file the factor, and the report shows them."""
from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

__all__ = ["Finding", "recognise", "recognise_projection"]


class Finding(NamedTuple):
    pattern: str  # constant_factor | sign_flip | zero_gradient | transpose | wrong_axis | missing_timestep
    why: str  # one clause for the verdict's message
    factor: float | None = None  # reference = factor x oracle (constant_factor, sign_flip)


def _close(a, b, tol=1e-6) -> bool:
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), 1e-300)
    return bool(np.abs(a - b).max(initial=0.0) <= tol * scale)


def _round_factor(c: float, rel: float = 1e-6) -> str | None:
    """'N', '1/N' or 'p/q' for a factor a derivation plausibly gets wrong by; None for an arbitrary one."""
    for q in range(1, 65):
        p = round(c * q)
        if p != 0 and abs(c * q - p) < rel * abs(p) and abs(p) <= 64:
            return f"{p}" if q == 1 else f"{p}/{q}"
    return None


def _axes_of_size(k: int, shapes: dict | None) -> list[str]:
    return [f"{name}.shape[{i}]" for name, shape in (shapes or {}).items() for i, n in enumerate(shape) if n == k]


def _factor_finding(name: str, c: float, factor: str, shapes: dict | None) -> Finding:
    """A constant factor, named once: the fraction, and the axes of that size (a missing or extra 1/N
    is the commonest derivation bug)."""
    why = f"{name} is off by a constant factor {factor} (ref = {c:.6g} x oracle)"
    m = re.fullmatch(r"-?(1/)?(\d+)", factor)
    if m and int(m.group(2)) >= 2:
        axes = _axes_of_size(int(m.group(2)), shapes)[:3]
        if axes:
            what = ("divided by that size once too often" if m.group(1)
                    else "an extra factor of that size (a missing 1/N)")
            why += f"; {m.group(2)} = {', '.join(axes)}: {what}"
    return Finding("constant_factor", why, c)


def recognise(ref: np.ndarray, oracle: np.ndarray, *, name: str = "grad", seq_axis: int | None = None,
              shapes: dict | None = None) -> Finding | None:
    """The pattern of the reference gradient `ref` against the correct `oracle` (element by element)."""
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(oracle, dtype=np.float64)
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    if np.abs(b).max(initial=0.0) == 0:
        return None
    if np.abs(a).max(initial=0.0) == 0:
        return Finding("zero_gradient", f"{name} is identically zero")
    if _close(a, -b):
        return Finding("sign_flip", f"{name} has the wrong sign", -1.0)
    c = float(np.vdot(a, b) / np.vdot(b, b))
    # a one-element gradient is always "a multiple" of the right one: only a round factor says anything
    factor = _round_factor(c)
    if a.size == 1 and factor is not None and not re.fullmatch(r"-?\d+|-?1/\d+", factor):
        factor = None  # one number against another: only an integer or 1/N factor is telling
    if _close(a, c * b, 1e-5) and factor not in (None, "1"):
        return _factor_finding(name, c, factor, shapes)
    if a.ndim == 2 and a.shape[0] == a.shape[1] and a.shape[0] > 1 and _close(a, b.T):
        return Finding("transpose", f"{name} is the transpose of the right gradient")
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
            return Finding(label, f"{name} is wrong only at index {int(wrong[0])} of axis {ax}")
    # summed over the wrong axis: the reference is constant along an axis where the truth varies
    for ax in range(a.ndim):
        if a.shape[ax] > 1 and _close(a, np.broadcast_to(a.take([0], axis=ax), a.shape), 1e-9) \
                and not _close(b, np.broadcast_to(b.take([0], axis=ax), b.shape), 1e-6):
            return Finding("wrong_axis", f"{name} is constant along axis {ax}, the right gradient is not "
                                         f"(a sum over the wrong axis?)")
    return None


def recognise_projection(proj: np.ndarray, values: np.ndarray, allowed: np.ndarray, *, name: str = "grad",
                         shapes: dict | None = None) -> Finding | None:
    """The pattern of a gradient seen only through directional derivatives: `proj` (the reference's,
    <ref, u_k>) against `values` (finite differences'), each within `allowed` of the truth. Only a
    constant factor (a sign flip, a zero gradient) shows through projections, and only with two
    directions or more: one number against another is a multiple of it by construction."""
    p, v = np.asarray(proj, np.float64), np.asarray(values, np.float64)
    if p.size < 2 or not (np.isfinite(p).all() and np.isfinite(v).all()) or np.abs(v).max(initial=0.0) == 0:
        return None
    if np.all(np.abs(p) <= allowed):
        return Finding("zero_gradient", f"{name} is zero along every direction")
    if np.all(np.abs(p + v) <= allowed):
        return Finding("sign_flip", f"{name} has the wrong sign", -1.0)
    c = float(np.vdot(p, v) / np.vdot(v, v))
    # finite differences are exact to their tolerance only: a factor is round to that precision
    factor = _round_factor(c, rel=min(max(float(np.max(allowed / np.abs(v))), 1e-6), 1e-4))
    if factor not in (None, "1") and np.all(np.abs(p - c * v) <= allowed):
        return _factor_finding(name, c, factor, shapes)
    return None
