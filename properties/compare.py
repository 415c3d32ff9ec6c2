"""Two arrays -> figures and a verdict: max abs/rel/ULP error, where, NaN/Inf agreement, and the
smallest atol/rtol that would have passed. The tolerance comes from `tolerances.policy`."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from .tolerances import Policy


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
    detail: str = ""
    _err: np.ndarray | None = field(default=None, repr=False, compare=False)
    _absb: np.ndarray | None = field(default=None, repr=False, compare=False)
    _ulp_dtype: str = field(default="float64", repr=False, compare=False)

    @functools.cached_property
    def max_abs(self) -> float:
        return float(self._err.max(initial=0.0))

    @functools.cached_property
    def max_rel(self) -> float:
        err, absb = self._err, self._absb
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            rel = np.where(absb > 0, err / absb, np.where(err > 0, np.inf, 0.0))
        return float(rel.max(initial=0.0))

    @functools.cached_property
    def max_ulp(self) -> float:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ulp = self._err / np.spacing(self._absb.astype(self._ulp_dtype)).astype(np.float64)
        return float(ulp.max(initial=0.0))

    @functools.cached_property
    def needed_atol(self) -> float:
        return max(float(np.max(self._err - self.rtol * self._absb, initial=0.0)), 0.0)

    @functools.cached_property
    def needed_rtol(self) -> float:
        err, absb, atol = self._err, self._absb, self.atol
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
    nonfinite_mismatch = bool((fa != fb).any() or not same_nonfinite.all())
    both = fa & fb
    scale = max(_finite_stats(a[both], b[both]))
    atol = pol.atol(scale)
    err = np.abs(np.where(both, a, 0.0) - np.where(both, b, 0.0))
    allowed = atol + pol.rtol * np.abs(np.where(both, b, 0.0))
    ratio_arr = err / allowed
    if nonfinite_mismatch:
        bad = ~(fa & fb) & ~same_nonfinite | (fa != fb)
        worst = np.unravel_index(int(np.argmax(bad)), a.shape) if a.ndim else ()
        ratio = float("inf")
    else:
        worst = np.unravel_index(int(np.argmax(ratio_arr)), a.shape) if a.size else None
        ratio = float(ratio_arr.max(initial=0.0))
    absb = np.abs(np.where(both, b, 0.0))
    return _figures(err, absb, atol, pol, ulp_dtype, nonfinite_mismatch, ratio, worst)


def _compare_finite(a: np.ndarray, b: np.ndarray, pol: Policy, ulp_dtype: str) -> Comparison:
    """`compare` when both sides are finite everywhere (nearly always): the same figures, without the
    masking passes (a check compares ~10 arrays; the masks were most of its cost)."""
    absb = np.abs(b)
    scale = max(float(np.abs(a).max(initial=0.0)), float(absb.max(initial=0.0)))
    atol = pol.atol(scale)
    err = np.abs(a - b)
    ratio_arr = err / (atol + pol.rtol * absb)
    if a.size:
        i = int(np.argmax(ratio_arr))
        worst = np.unravel_index(i, a.shape)
        ratio = float(ratio_arr.reshape(-1)[i])
        if ratio != ratio:  # NaN (0/0 when nothing is allowed): max() propagates it, argmax finds it
            ratio = float(ratio_arr.max(initial=0.0))
    else:
        worst, ratio = None, 0.0
    return _figures(err, absb, atol, pol, ulp_dtype, False, ratio, worst)


def _figures(err, absb, atol, pol, ulp_dtype, nonfinite_mismatch, ratio, worst) -> Comparison:
    return Comparison(ok=not nonfinite_mismatch and ratio <= 1.0, nonfinite_mismatch=nonfinite_mismatch,
                      ratio=ratio, worst_index=tuple(int(i) for i in worst) if worst is not None else None,
                      atol=float(atol), rtol=pol.rtol, _err=err, _absb=absb, _ulp_dtype=ulp_dtype)


def compare_projection(ref_grad: np.ndarray, dirs: np.ndarray, values: np.ndarray, pol: Policy,
                       *, ulp_dtype: str) -> Comparison:
    """Directional derivatives <ref_grad, u_k> against finite-difference ones. The natural scale
    of a dot product is sum |g_i u_i|: cancellation inside it is not the reference's fault."""
    g = np.asarray(ref_grad, dtype=np.float64)
    k = dirs.shape[0]
    proj = dirs.reshape(k, -1) @ g.reshape(-1)
    scale = np.abs(dirs.reshape(k, -1)) @ np.abs(g.reshape(-1))
    cmp = compare(proj, values, Policy(pol.rtol, pol.floor, pol.source), ulp_dtype=ulp_dtype)
    # re-judge with the per-direction scale instead of the max over directions
    if not cmp.nonfinite_mismatch:
        err = np.abs(proj - values)
        allowed = pol.rtol * (np.abs(values) + scale) + pol.floor
        cmp.ratio = float((err / allowed).max(initial=0.0))
        cmp.ok = cmp.ratio <= 1.0
    cmp.detail = "directional derivatives along %d random directions" % k
    return cmp
