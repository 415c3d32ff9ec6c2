"""Two arrays -> figures and a verdict: max abs/rel/ULP error, where, NaN/Inf agreement, and the
smallest atol/rtol that would have passed. The tolerance comes from `tolerances.policy`.

A comparison keeps, element by element, the error and the error it allowed (`err`, `allowed`):
the report draws the verdict from those instead of judging again.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from .tolerances import Policy

__all__ = ["Comparison", "compare", "compare_projection", "project"]


@dataclass
class Comparison:
    """The verdict (`ok`, `ratio`, where) is computed eagerly; the descriptive figures (max abs/rel/
    ULP error, the atol/rtol that would have passed) on first access, from the error arrays kept
    here: a run compares ~10 arrays per example and reports the figures of one example per cell."""

    ok: bool
    nonfinite_mismatch: bool
    ratio: float  # max of error / allowed: > 1 fails
    worst_index: tuple[int, ...] | None
    atol: float
    rtol: float
    err: np.ndarray = field(repr=False, compare=False)  # |ref - oracle| per compared element (0 where non-finite)
    allowed: np.ndarray = field(repr=False, compare=False)  # the error allowed per element
    mismatch: np.ndarray | None = field(default=None, repr=False, compare=False)  # NaN/Inf on one side only
    directional: bool = False  # the elements are directional derivatives (numeric oracle, large inputs)
    detail: str = ""
    _absb: np.ndarray | None = field(default=None, repr=False, compare=False)
    _ulp_dtype: str = field(default="float64", repr=False, compare=False)

    @property
    def beyond(self) -> np.ndarray:
        """The judge's verdict per element: True where the error exceeds what was allowed."""
        over = self.err > self.allowed
        return over | self.mismatch if self.mismatch is not None else over

    @functools.cached_property
    def max_abs(self) -> float:
        return float(self.err.max(initial=0.0))

    # Relative and ULP figures are measured against the tolerance's scale, never divided by ~0 (a
    # passing cell read "max ULP 1.27e+40"): a relative error against |expected| but never against
    # less than atol (below it, the tolerance itself cannot tell a value from 0); a ULP distance in
    # the spacing at |expected| but never at less than atol/rtol, the magnitude where the allowed
    # error turns from absolute to relative (a passing cell is then a few ULP at most).
    def _floored(self, floor: float) -> np.ndarray:
        return np.maximum(self._absb, floor if floor > 0 else np.finfo(np.float64).tiny)

    @functools.cached_property
    def max_rel(self) -> float:
        return float((self.err / self._floored(self.atol)).max(initial=0.0))

    @functools.cached_property
    def max_ulp(self) -> float:
        scale = self._floored(self.atol / self.rtol if self.rtol > 0 else self.atol)
        with np.errstate(over="ignore"):
            spacing = np.spacing(scale.astype(self._ulp_dtype)).astype(np.float64)
        return float((self.err / spacing).max(initial=0.0))

    @functools.cached_property
    def needed_atol(self) -> float:
        return max(float(np.max(self.err - self.rtol * self._absb, initial=0.0)), 0.0)

    @functools.cached_property
    def needed_rtol(self) -> float:
        err, absb, atol = self.err, self._absb, self.atol
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            needed = float(np.max(np.where(err > atol, (err - atol) / absb, 0.0), initial=0.0))
        return needed if np.isfinite(needed) else float("inf")


def _finite_stats(a, b):
    return (np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))


def compare(ref: np.ndarray, oracle: np.ndarray, pol: Policy, *, ulp_dtype: str) -> Comparison:
    """Compare the side under test (`ref`) with the trusted side (`oracle`), elementwise."""
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(oracle, dtype=np.float64)
    if np.isfinite(a).all() and np.isfinite(b).all():
        return _compare_finite(a, b, pol, ulp_dtype)
    fa, fb = np.isfinite(a), np.isfinite(b)
    # NaN/Inf must sit at the same places with the same values (inf == inf, nan ~ nan)
    same_nonfinite = np.where(fa | fb, True, (np.isnan(a) & np.isnan(b)) | (a == b))
    mismatch = (fa != fb) | ~same_nonfinite
    nonfinite_mismatch = bool(mismatch.any())
    both = fa & fb
    scale = max(_finite_stats(a[both], b[both]))
    atol = pol.atol(scale)
    err = np.abs(np.where(both, a, 0.0) - np.where(both, b, 0.0))
    absb = np.abs(np.where(both, b, 0.0))
    allowed = atol + pol.rtol * absb
    if nonfinite_mismatch:
        worst = np.unravel_index(int(np.argmax(mismatch)), a.shape) if a.ndim else ()
        ratio = float("inf")
    else:
        ratio_arr = err / allowed
        worst = np.unravel_index(int(np.argmax(ratio_arr)), a.shape) if a.size else None
        ratio = float(ratio_arr.max(initial=0.0))
    return _verdict(err, allowed, absb, atol, pol, ulp_dtype, ratio, worst, mismatch)


def _compare_finite(a: np.ndarray, b: np.ndarray, pol: Policy, ulp_dtype: str) -> Comparison:
    """`compare` when both sides are finite everywhere (nearly always): the same figures, without the
    masking passes (a check compares ~10 arrays; the masks were most of its cost)."""
    absb = np.abs(b)
    scale = max(float(np.abs(a).max(initial=0.0)), float(absb.max(initial=0.0)))
    atol = pol.atol(scale)
    err = np.abs(a - b)
    allowed = atol + pol.rtol * absb
    ratio_arr = err / allowed
    if a.size:
        i = int(np.argmax(ratio_arr))
        worst = np.unravel_index(i, a.shape)
        ratio = float(ratio_arr.reshape(-1)[i])
        if ratio != ratio:  # NaN (0/0 when nothing is allowed): max() propagates it, argmax finds it
            ratio = float(ratio_arr.max(initial=0.0))
    else:
        worst, ratio = None, 0.0
    return _verdict(err, allowed, absb, atol, pol, ulp_dtype, ratio, worst, None)


def _verdict(err, allowed, absb, atol, pol, ulp_dtype, ratio, worst, mismatch) -> Comparison:
    nonfinite_mismatch = mismatch is not None and bool(mismatch.any())
    return Comparison(ok=not nonfinite_mismatch and ratio <= 1.0, nonfinite_mismatch=nonfinite_mismatch,
                      ratio=ratio, worst_index=tuple(int(i) for i in worst) if worst is not None else None,
                      atol=float(atol), rtol=pol.rtol, err=err, allowed=allowed, mismatch=mismatch,
                      _absb=absb, _ulp_dtype=ulp_dtype)


def compare_projection(ref_grad: np.ndarray, dirs: np.ndarray, values: np.ndarray, pol: Policy,
                       *, ulp_dtype: str) -> Comparison:
    """Directional derivatives <ref_grad, u_k> against finite-difference ones. The natural scale
    of a dot product is sum |g_i u_i|: cancellation inside it is not the reference's fault."""
    g = np.asarray(ref_grad, dtype=np.float64)
    k = dirs.shape[0]
    proj = project(dirs, g)
    scale = np.abs(dirs.reshape(k, -1)) @ np.abs(g.reshape(-1))
    cmp = compare(proj, values, Policy(pol.rtol, pol.floor, pol.source), ulp_dtype=ulp_dtype)
    # judge each direction at its own scale instead of the largest over the directions
    if not cmp.nonfinite_mismatch:
        cmp.allowed = pol.rtol * (np.abs(values) + scale) + pol.floor
        ratio_arr = cmp.err / cmp.allowed
        cmp.ratio = float(ratio_arr.max(initial=0.0))
        cmp.ok = cmp.ratio <= 1.0
        if k:
            cmp.worst_index = (int(np.argmax(ratio_arr)),)
    cmp.directional = True
    cmp.detail = "directional derivatives along %d random directions" % k
    return cmp


def project(dirs: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """<grad, u_k> for each direction u_k in `dirs` (k, *shape), in float64."""
    k = dirs.shape[0]
    return np.asarray(dirs, dtype=np.float64).reshape(k, -1) @ np.asarray(grad, dtype=np.float64).reshape(-1)
