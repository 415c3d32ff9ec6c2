"""Severity: is a failing side a wrong derivation (`fail`) or a right one whose evaluation breaks in an
extreme regime (`unstable`)? Decided on the failing case after triangulation (properties/blame.py):

- `precision` (a float32 gap that closes when the same case runs in float64) is `unstable`: the
  formula is right, float32 is not enough for how it is evaluated;
- in a regime of extreme values (strategies.REGIMES with an `ordinary` map), the same case moved to
  ordinary magnitudes is judged again: when it agrees there, the formula is right and its evaluation
  overflows, underflows or cancels at the extreme: `unstable`, with the regime, the threshold and
  the stable formula where the op says which;
- a side that only an oracle gets wrong (`oracle:<name>`) is the harness's concern, not the code's:
  `warning` — unless that oracle ran where the audited code runs (a derivation's framework VJPs in the
  audit child, `target.oracles_beside_user_code`): audited code can forge those, and a forged
  framework must not turn a wrong backward into a warning: `fail`;
- anything else is `fail`.
"""
from __future__ import annotations

import numpy as np

from .evaluate import Evaluation, evaluate
from .spec import Case, OpSpec
from .strategies import REGIMES
from .target import Target
from .verdict import Side, Verdict

__all__ = ["exp_limits", "settle_severity"]


def exp_limits(dtype: str) -> tuple[float, float]:
    """(z below which exp(z) rounds to 0, z above which exp(z) is inf) in `dtype`."""
    info = np.finfo(dtype)
    # below half the smallest subnormal exp rounds to 0 (computed in logs: the half is no float64)
    return float(np.log(float(info.smallest_subnormal)) - np.log(2.0)), float(np.log(float(info.max)))


def _gap(case: Case) -> float | None:
    """By how much the true class's score trails the largest (scores x, labels y, class axis last)."""
    x, y = case.arrays.get("x"), case.params.get("y")
    if x is None or y is None or np.ndim(x) < 2 or np.shape(y) != np.shape(x)[:-1]:
        return None
    true = np.take_along_axis(np.asarray(x, np.float64), np.asarray(y)[..., None], axis=-1)[..., 0]
    return float(np.max(np.max(x, axis=-1) - true))


def _log_softmax_hint(case: Case, dtype: str, bad: str | None = None) -> str:
    """`bad`: what the target's side holds where the oracle is finite. NaN is inf / inf, an exp that
    overflowed (no max shift); inf is log 0, a probability that underflowed (a shifted softmax too)."""
    under, over = exp_limits(dtype)
    gap = _gap(case)
    x = case.arrays.get("x")
    parts = []
    if x is not None and float(np.max(x)) > over and bad != "inf":
        parts.append(f"exp(z) is inf once z > {over:.1f} in {dtype} (here z reaches {float(np.max(x)):.4g}): "
                     f"subtract each row's max before exp")
    if gap is None or gap > -under or not parts:
        here = f" (here by {gap:.4g})" if gap is not None else ""
        parts.append(f"−log p[y] of an explicit softmax is inf once the true class's score trails the largest by "
                     f"more than {-under:.0f} in {dtype}{here}, where p[y] underflows to 0")
    return "; ".join(parts) + ("; compute log p as z − max z − log Σ exp(z − max z) (a log-softmax) instead of the "
                               "log of a softmax")


def _softmax_hint(case: Case, dtype: str, bad: str | None = None) -> str:
    _, over = exp_limits(dtype)
    return (f"exp(z) is inf once z > {over:.1f} in {dtype}; subtract each row's max before exp (softmax(z) = "
            f"softmax(z − max z))")


def _saturation_hint(case: Case, dtype: str, bad: str | None = None) -> str:
    _, over = exp_limits(dtype)
    return (f"exp(−x) is inf once −x > {over:.1f} in {dtype} and 1 − tanh²(x) or σ(x)(1 − σ(x)) cancel to 0 "
            f"long before; use a stable sigmoid (exp(−|x|) in both branches) and compute the local derivative "
            f"from the saturated output")


# What breaks, and the stable formula, where an op says: op name -> (case, dtype) -> a sentence.
_HINTS = {
    "softmax_cross_entropy": _log_softmax_hint,
    "temporal_softmax_loss": _log_softmax_hint,
    "rnn_softmax_sequence": _log_softmax_hint,
    "log_softmax": _log_softmax_hint,
    "softmax": _softmax_hint,
    "sigmoid": _saturation_hint,
    "sigmoid_neuron": _saturation_hint,
    "mlp_sigmoid_mse": _saturation_hint,
}


def _variance_hint(spec: OpSpec | None, case: Case, dtype: str) -> str | None:
    """For a normalisation: a variance computed as E[x²] − E[x]² loses 2·log10(|x|/σ) digits."""
    if spec is None or spec.tolerance is None or not callable(spec.tolerance.rtol_factor):
        return None
    try:
        cond = float(spec.tolerance.rtol_factor(case))
    except Exception:  # a user's hook (like=) on a case it does not expect: no hint, the verdict stands
        return None
    if not cond > 10:
        return None
    digits = 2 * np.log10(cond)
    return (f"the normalised values are nearly constant (|x|/σ up to {cond:.3g}): a variance computed as "
            f"E[x²] − E[x]² loses ~{digits:.0f} of {dtype}'s {-np.log10(np.finfo(dtype).eps):.0f} digits here; "
            f"compute it as E[(x − E[x])²] (np.var), and subtract the mean before anything is squared")


def _ordinary(case: Case, regime: str) -> Case | None:
    """The same case with every differentiable array moved to ordinary magnitudes, or None when the
    regime is not one of extreme values."""
    move = REGIMES[regime].ordinary if regime in REGIMES else None
    if move is None:
        return None
    return Case({n: move(np.asarray(a, dtype=np.float64)) for n, a in case.arrays.items()}, dict(case.params))


def _nonfinite_mine(v: Verdict, ev: Evaluation) -> str | None:
    """'inf' or 'NaN' when the target's side holds it where the oracle is finite."""
    mine = as_arrays(ev.out) if v.phase == "forward" else [ev.grads.get(v.phase[5:-1])] if v.phase else []
    for a in mine:
        a = np.asarray(a, dtype=np.float64) if a is not None else None
        if a is not None and not np.isfinite(a).all():
            return "NaN" if np.isnan(a).any() else "inf"
    return None


def as_arrays(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def settle_severity(spec: OpSpec | None, target: Target, ev: Evaluation, regime: str) -> None:
    """Set `severity` on every failing or erroring side of a triangulated evaluation (and its `why`
    when the derivation turns out right)."""
    ordinary_ev: dict[Side, Evaluation] = {}
    for side, v in ev.sides.items():
        if v.status == "error":
            v.severity = "fail"
            continue
        if v.status != "fail":
            continue
        name = spec.name if spec is not None else target.op
        if v.blame == "precision":
            v.severity = "unstable"
            hint = _variance_hint(spec, ev.case, ev.dtype) if spec is not None and spec.family in (
                "normalization", "derivation") else None
            if hint is None and name in _HINTS and v.pattern != "tf32":
                hint = _HINTS[name](ev.case, ev.dtype, _nonfinite_mine(v, ev))
            if hint:
                v.why.append(hint)
            continue
        if v.blame is not None and v.blame.startswith("oracle:") and not getattr(target, "oracles_beside_user_code", False):
            v.severity = "warning"
            continue
        v.severity = "fail"
        if v.kink is not None:
            continue  # an invalid subgradient is wrong at any magnitude
        ordinary = _ordinary(ev.case, regime)
        if ordinary is None:
            continue
        if side not in ordinary_ev:
            ordinary_ev[side] = evaluate(spec, target, ordinary, ev.dtype, [side], douts=ev.douts, stream=ev.stream)
        if ordinary_ev[side].sides[side].status not in ("pass", "kink"):
            continue
        bad = _nonfinite_mine(v, ev)
        breaks = (f"gives {bad} where {side[0]} is finite" if bad else "loses its digits")
        why = (f"the same case at ordinary magnitudes agrees: the formula is right, its evaluation {breaks} in the "
               f"{regime} regime ({REGIMES[regime].description})")
        hint = _HINTS.get(name)
        v.severity, v.pattern, v.factor = "unstable", None, None
        v.why = [why] + ([hint(ev.case, ev.dtype, bad)] if hint else [])
