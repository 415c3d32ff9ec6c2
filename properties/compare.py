"""Two arrays -> figures and a verdict: max abs/rel/ULP error, where, NaN/Inf agreement, and the
smallest atol/rtol that would have passed. The tolerance comes from `tolerances.policy`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tolerances import Policy


@dataclass
class Comparison:
    ok: bool
    nonfinite_mismatch: bool
    max_abs: float
    max_rel: float
    max_ulp: float
    ratio: float  # max of error / allowed: > 1 fails
    worst_index: tuple[int, ...] | None
    atol: float
    rtol: float
    needed_atol: float
    needed_rtol: float
    detail: str = ""


def _finite_stats(a, b):
    return (np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))


def compare(ref: np.ndarray, oracle: np.ndarray, pol: Policy, *, ulp_dtype: str) -> Comparison:
    """Compare the side under test (`ref`) with the trusted side (`oracle`), elementwise."""
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(oracle, dtype=np.float64)
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
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rel = np.where(absb > 0, err / absb, np.where(err > 0, np.inf, 0.0))
        ulp = err / np.spacing(absb.astype(ulp_dtype)).astype(np.float64)
        needed_rtol = float(np.max(np.where(err > atol, (err - atol) / absb, 0.0), initial=0.0))
    needed_atol = float(np.max(err - pol.rtol * absb, initial=0.0))
    return Comparison(
        ok=not nonfinite_mismatch and ratio <= 1.0,
        nonfinite_mismatch=nonfinite_mismatch,
        max_abs=float(err.max(initial=0.0)),
        max_rel=float(rel.max(initial=0.0)),
        max_ulp=float(ulp.max(initial=0.0)),
        ratio=ratio,
        worst_index=tuple(int(i) for i in worst) if worst is not None else None,
        atol=float(atol), rtol=pol.rtol,
        needed_atol=max(needed_atol, 0.0),
        needed_rtol=needed_rtol if np.isfinite(needed_rtol) else float("inf"),
    )


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
