"""What the oracles of a `gradaudit.function` subject add to the oracle interface: the same math in two
dtypes for a low-precision cell, and finite differences of a forward that only computes in its own
low precision. NumPy only; the frameworks come in through the `vjp` functions handed over.

Low precision (float16, bfloat16). An oracle computes the case twice: in float64, on the same
(exactly upcast) inputs — the value the subject is judged against — and in the cell's dtype, the
error of which (`info["reference_error"]`, per array) sets the error allowed
(properties.tolerances.reference_relative; the technique of flash-attention's tests).

Finite differences. Where the subject's forward computes in float64 (any torch or JAX code does when
given float64 inputs) they are oracles.numeric's, in float64. Where it does not (a kernel that only
exists in float16 or bfloat16), the forward is evaluated in its own dtype and the differences taken in
float64 arithmetic, with the step the dtype calls for: eps(dtype)^(1/3) times the input's scale
(truncation ~h² against rounding ~eps/h; a fixed step below the dtype's resolution, as `check_grads`'
on bfloat16, rounds x + h back to x). Each perturbation is the one actually realised after rounding
the perturbed input to the dtype, so the directional derivatives are exact in direction.
"""
from __future__ import annotations

import numpy as np

from . import numeric
from .base import OracleResult, OracleUnavailable, Projection, as_tuple

__all__ = ["LOW_PRECISION", "NotDifferentiable", "RuleError", "dtype_eps", "errors_between", "finite_differences",
           "max_error", "same_math_errors", "two_dtypes", "upcast"]

LOW_PRECISION = ("float16", "bfloat16")


class RuleError(Exception):
    """The subject's rule did something no gradient can be read from (the message says what)."""


class NotDifferentiable(OracleUnavailable):
    """A forward whose outputs the framework cannot differentiate: this oracle cannot judge it."""


def _np_dtype(dtype: str):
    if str(dtype) == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def dtype_eps(dtype: str) -> float:
    if str(dtype) == "bfloat16":
        import ml_dtypes

        return float(ml_dtypes.finfo(ml_dtypes.bfloat16).eps)
    return float(np.finfo(dtype).eps)


def upcast(values):
    """Float arrays (a dict's values, or a sequence) as float64; anything else as it is."""
    def up(v):
        floating = isinstance(v, np.ndarray) and (v.dtype.kind == "f" or v.dtype.name == "bfloat16")
        return np.asarray(v, dtype=np.float64) if floating else v
    if isinstance(values, dict):
        return {k: up(v) for k, v in values.items()}
    return tuple(up(v) for v in values)


def max_error(lo, hi) -> float:
    """max |lo - hi| over the elements both hold finite (as float64)."""
    a, b = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.max(np.abs(a - b)[both], initial=0.0))


def _out_names(n: int) -> list[str]:
    return ["out" if i == 0 else f"out{i}" for i in range(n)]


def errors_between(lo: OracleResult, hi: OracleResult) -> dict:
    """{"forward": {out name: err}, "grads": {array name: err}}: what the cell's dtype costs the oracle."""
    out = {"forward": {}, "grads": {}}
    if lo.out is not None and hi.out is not None:
        for name, a, b in zip(_out_names(len(as_tuple(hi.out))), as_tuple(lo.out), as_tuple(hi.out)):
            out["forward"][name] = max_error(a, b)
    for n, g in hi.grads.items():
        if not isinstance(g, Projection) and not isinstance(lo.grads.get(n), Projection):
            out["grads"][n] = max_error(lo.grads[n], g)
    return out


def two_dtypes(base_vjp, same_math=None):
    """`base_vjp` (the oracle interface's `vjp`) for a subject: unchanged in float64 and float32; in a
    low precision, the float64 result on the same inputs, with `info["reference_error"]`: the error
    the same math shows in the cell's dtype. `same_math(arrays, params, douts, dtype, device)` gives
    those errors (the subject's own framework computing its primal); without it, this oracle's own
    computation in the cell's dtype does."""
    def vjp(forward, arrays, params, douts, *, dtype, device, **extra):
        if dtype not in LOW_PRECISION:
            return base_vjp(forward, arrays, params, douts, dtype=dtype, device=device, **extra)
        hi = base_vjp(forward, upcast(arrays), upcast(params), upcast(douts), dtype="float64", device=device)
        errors = same_math(arrays, params, douts, dtype, device) if same_math is not None else None
        if errors is None:
            errors = errors_between(base_vjp(forward, arrays, params, douts, dtype=dtype, device=device), hi)
        return OracleResult(out=hi.out, grads=hi.grads, info={**hi.info, "reference_error": errors})

    return vjp


def same_math_errors(base_vjp, forward):
    """(arrays, params, douts, dtype, device) -> the errors of `forward` differentiated in `dtype` against
    float64 (errors_between), remembered for the last case: every side of one evaluation asks."""
    last = {}

    def errors(arrays, params, douts, dtype, device):
        key = (dtype, device)
        if last.get("case") is not arrays or last.get("key") != key:
            hi = base_vjp(forward, upcast(arrays), upcast(params), upcast(douts), dtype="float64", device=device)
            lo = base_vjp(forward, arrays, params, douts, dtype=dtype, device=device)
            last.update(case=arrays, key=key, errors=errors_between(lo, hi))
        return last["errors"]

    return errors


def finite_differences(forward, arrays: dict, params: dict, douts: tuple, *, compute_dtype: str,
                       directions: int = numeric.DIRECTIONS) -> OracleResult:
    """Central differences of `forward(*arrays, **params) -> out`, evaluated in `compute_dtype` (its
    inputs rounded to it), differences in float64; the step eps(compute_dtype)^(1/3) * max(1, |x|)."""
    cdt = _np_dtype(compute_dtype)
    e = dtype_eps(compute_dtype)
    step = e ** (1 / 3)
    xs = {n: np.asarray(a, dtype=np.float64) for n, a in arrays.items()}
    ds = [np.asarray(d, dtype=np.float64) for d in douts]

    def g(values: dict) -> float:
        outs = as_tuple(forward(*[np.asarray(v).astype(cdt) for v in values.values()], **params))
        return float(sum(np.sum(np.asarray(o, dtype=np.float64) * d) for o, d in zip(outs, ds)))

    outs0 = as_tuple(forward(*[x.astype(cdt) for x in xs.values()], **params))
    magnitude = float(sum(np.sum(np.abs(np.asarray(o, dtype=np.float64) * d)) for o, d in zip(outs0, ds)))
    total = sum(x.size for x in xs.values())
    grads, h_min = {}, None
    full = total <= numeric.FULL_JACOBIAN_MAX_ELEMENTS
    if not full:
        rng = np.random.default_rng(20240611)  # fixed: the same case always gets the same directions
    for n, x in xs.items():
        x_c = x.astype(cdt).astype(np.float64)  # the point itself, as the dtype holds it
        if full:
            grad = np.zeros_like(x)
            h = step * np.maximum(1.0, np.abs(x_c))
            flat, gflat = x_c.reshape(-1), grad.reshape(-1)
            for i in range(flat.size):
                orig = flat[i]
                plus = float(np.float64(cdt.type(orig + h.reshape(-1)[i])))
                minus = float(np.float64(cdt.type(orig - h.reshape(-1)[i])))
                flat[i] = plus
                gp = g({**xs, n: x_c})
                flat[i] = minus
                gm = g({**xs, n: x_c})
                flat[i] = orig
                gflat[i] = (gp - gm) / (plus - minus)
                h_min = min(h_min or np.inf, plus - minus)
            grads[n] = grad
        else:
            h = step * max(1.0, float(np.abs(x_c).max(initial=0.0)))
            dirs, values = np.empty((directions, *x.shape)), np.empty(directions)
            for k in range(directions):
                u = rng.standard_normal(x.shape)
                plus = (x_c + h * u).astype(cdt).astype(np.float64)
                minus = (x_c - h * u).astype(cdt).astype(np.float64)
                gp, gm = g({**xs, n: plus}), g({**xs, n: minus})
                dirs[k] = (plus - minus) / (2 * h)  # the perturbation actually realised
                values[k] = (gp - gm) / (2 * h)
            grads[n] = Projection(dirs=dirs, values=values)
            h_min = min(h_min or np.inf, 2 * h)
    # g carries ~eps * sum|d * out| of rounding per evaluation; a difference quotient divides it by the step
    noise = 8 * e * magnitude / max(h_min or step, 1e-300)
    return OracleResult(out=None, grads=grads, info={"step": step, "noise": noise, "compute_dtype": compute_dtype})
