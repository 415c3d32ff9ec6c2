"""The one tolerance policy. Every comparison in gradaudit takes its tolerance from here.

An element passes when |ref - oracle| <= rtol * |oracle| + atol, with

    rtol = C * eps(dtype) * sqrt(n)        C = 64, n = the largest input array's size
    atol = rtol * (scale + natural)        scale = max |value| over both arrays
    natural = max(1, max |x|) * max |dout| for gradients, max(1, max |x|) for forwards
                                           (x: every input array)

Why:
- Two correct implementations differ by rounding only. A length-n reduction (a matmul row, a
  softmax normaliser, a batch sum) accumulates ~sqrt(n) * eps of relative error in the typical case
  (n * eps in the worst); different algorithms (im2col vs a direct conv, two-pass vs fused
  variance) add a small constant factor. C = 64 covers those with a wide margin at n <= 10^4 while
  staying ~10^6 x tighter than the errors a wrong derivation makes (a missing 1/N, a sign, a
  transpose: O(1) relative).
- `atol` is scaled by the array's magnitude: an element computed as a difference of large terms
  (softmax - onehot, the batchnorm backward) carries absolute error ~ eps * the large terms, so a
  purely elementwise relative test would cry wolf on the small elements.
- The upstream gradient's magnitude is the natural absolute scale of a VJP's rounding: a local
  derivative computed by cancellation (tanh's 1 - h², a saturated sigmoid's s(1 - s)) carries an
  absolute error of a few ulps of 1, times dout, however small the result. It matters when every
  element is tiny: XLA's CPU tanh is ~5 ulp accurate (torch's and NumPy's ~1), so in saturated
  RNN states JAX's gradient sits ~1e-13 * |dout| from the others; JAX also flushes tiny float64
  softmax gradient components to 0 (CONVENTIONS row 19). The inputs' magnitude multiplies that
  error on its way to a weight gradient (dwx = x^T (dout * (1 - h²))): measured 5.2e-14 between
  JAX and NumPy for |x| = 23 in a saturated RNN, where every element of dwx is below 1e-13.
- A forward's rounding is likewise relative to its inputs, not its output: batchnorm of a constant
  column is exactly 0, yet torch computes x*invstd - mean*invstd and returns 2.3e-13 for x = 3.
- The numeric oracle (float64 central differences, step eps^(1/3)) has truncation and rounding
  error ~ eps^(2/3) ≈ 4e-11 relative for O(1) curvature; with the large value regimes (steps of
  ~1e-3 absolute on inputs of ~100) curvature terms reach ~1e-7, so its rtol is 1e-5 — it judges
  gross errors, not the last digits.
- float32 is judged by the same formula with float32's eps; finite differences always run in
  float64, so a float32 cell against `numeric` takes the larger of the two rtols.

Reference-relative mode (`reference_relative`: float16 and bfloat16 cells of a `gradaudit.function`
subject, whose oracles compute the same math in the cell's dtype as well as in float64). There the
formula above is useless: 64 * eps * sqrt(n) is 6% at n = 1 in float16 and 50% in bfloat16. The
error allowed is instead what the cell's dtype itself costs, measured on this very case:

    allowed = K_REFERENCE * max |oracle in the cell's dtype - oracle in float64|
              + eps(dtype) * (|expected| + scale + natural)    (one rounding, at the scale of the
                                                                 result and of its operands)

the technique of flash-attention's tests (their kernel may be at most 2x as far from the float64
reference as the framework's own computation in the same low precision is). The float64 oracle is
the value judged against. The rounding floor matters on the small cases a search shrinks to: with
two elements, the framework's low-precision computation can land within a fraction of an ulp by luck
(measured: softmax cross-entropy in bfloat16, N=1, C=2, where softmax − onehot cancels to 0.05: the
framework's error 1e-4, a correct hand-written backward's 4e-3, one ulp of the operands ~1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["C", "K_REFERENCE", "NUMERIC_RTOL", "Policy", "eps", "policy", "reference_relative"]

C = 64
NUMERIC_RTOL = 1e-5
# flash-attention's tests allow 2x; the examples' float16/bfloat16 LayerNorm and softmax cross-entropy,
# computed in the cell's dtype by a different sequence of operations than the oracle's, came within
# 1.7x (benchmarks/bench.py --functions records their worst_target, the error over the allowed one):
# 3 leaves room for a fused kernel's other order of accumulation, and stays 1/3 of a wrong
# derivation's O(1) error
K_REFERENCE = 3


@dataclass(frozen=True)
class Policy:
    rtol: float
    floor: float
    source: str
    mode: str = "policy"  # or "reference-relative": the record's `tolerance_mode`

    def atol(self, scale: float) -> float:
        return self.rtol * scale + self.floor


def eps(dtype: str) -> float:
    if str(dtype) == "bfloat16":  # NumPy has no bfloat16; ml_dtypes (JAX's dependency) does
        import ml_dtypes

        return float(ml_dtypes.finfo(ml_dtypes.bfloat16).eps)
    return float(np.finfo(dtype).eps)


def policy(dtype: str, *, size: int, oracle: str, dout_max: float = 1.0, input_max: float = 1.0,
           override=None, forward: bool = False, noise: float = 0.0, case=None) -> Policy:
    """`noise`: the oracle's own absolute error estimate (finite differences: rounding / step)."""
    e = eps(dtype)
    rtol = C * e * np.sqrt(max(size, 1))
    source = f"policy: {C}*eps({dtype})*sqrt({size})"
    if oracle == "numeric" and not forward:
        if NUMERIC_RTOL > rtol:
            rtol, source = NUMERIC_RTOL, "policy: finite differences (float64, step eps^(1/3))"
    if override is not None:
        factor = override.rtol_factor(case) if callable(override.rtol_factor) else override.rtol_factor
        factor = max(float(factor), 1.0)
        rtol *= factor
        source += f"; op override x{factor:.3g}: {override.reason}"
        floor_rtol = (override.rtol_min or {}).get(dtype)
        if floor_rtol is not None and floor_rtol > rtol:
            rtol = floor_rtol
            source += f"; rtol raised to {floor_rtol:g}"
    natural = max(float(input_max), 1.0) * (1.0 if forward else max(float(dout_max), 1e-30))
    floor = max(rtol * natural, float(noise))
    return Policy(rtol=float(rtol), floor=float(floor), source=source)


def reference_relative(dtype: str, reference_error: float, *, input_max: float = 1.0, dout_max: float = 1.0,
                       forward: bool = False, noise: float = 0.0) -> Policy:
    """The reference-relative tolerance (see the module's docstring): `reference_error` is the largest
    |oracle in `dtype` - oracle in float64| of the array compared; the operands' scale is the policy's
    `natural` one; `noise`, the oracle's own absolute error (finite differences)."""
    e = eps(dtype)
    natural = max(float(input_max), 1.0) * (1.0 if forward else max(float(dout_max), 1e-30))
    # the smallest subnormal: an exact zero on both sides is no 0/0
    tiny = float(np.finfo(np.float16).smallest_subnormal) if dtype == "float16" else 1e-300
    return Policy(rtol=e, floor=K_REFERENCE * float(reference_error) + e * natural + float(noise) + tiny,
                  source=f"reference-relative: {K_REFERENCE} x {float(reference_error):.3g} (the same math in "
                         f"{dtype} against float64) + one rounding in {dtype}", mode="reference-relative")


# ---- the condition of a centring, found by probing the forward ------------------------------------

def _subsets(ndim: int) -> list[tuple[int, ...]]:
    """Every non-empty set of axes, smallest first."""
    out = [tuple(a for a in range(ndim) if mask >> a & 1) for mask in range(1, 2 ** ndim)]
    return sorted(out, key=len)


def centring_axes(forward, case, *, rtol: float = 1e-7) -> tuple[str, tuple[int, ...]] | None:
    """(array, axes) when `forward(*arrays, **params)` (float64, NumPy) does not change when that array
    gets an offset that is constant along `axes` (and varies along the others): it subtracts a mean
    over those axes, as a normalisation does. The smallest such set of axes of the first such array;
    None when the forward centres nothing."""
    arrays = {n: np.asarray(a, dtype=np.float64) for n, a in case.arrays.items()}
    params = dict(case.params)
    try:
        base = [np.asarray(o, dtype=np.float64) for o in _outputs(forward(*arrays.values(), **params))]
    except Exception:
        return None
    scale = max((float(np.abs(b).max(initial=0.0)) for b in base), default=0.0)
    rng = np.random.default_rng(0)
    for name, x in arrays.items():
        if x.ndim == 0 or x.size < 2:
            continue
        for axes in _subsets(x.ndim):
            shape = tuple(1 if a in axes else n for a, n in enumerate(x.shape))
            moved = dict(arrays, **{name: x + 3.0 * rng.standard_normal(shape) + 1.0})
            try:
                outs = [np.asarray(o, dtype=np.float64) for o in _outputs(forward(*moved.values(), **params))]
            except Exception:
                continue
            if len(outs) == len(base) and all(o.shape == b.shape and np.allclose(o, b, rtol=rtol, atol=rtol * max(scale, 1.0))
                                              for o, b in zip(outs, base)):
                return name, axes
    return None


def _outputs(out):
    return out if isinstance(out, (tuple, list)) else (out,)


def centring_condition(x: np.ndarray, axes: tuple[int, ...], eps: float = 0.0) -> float:
    """max |x| / σ over the sets of values centred together (σ over `axes`, with `eps` added to the
    variance as the forward does): how many digits the centring x - μ cancels (see
    properties/catalogue/normalization.py). A set with no spread at all counts 1/sqrt(eps(float64))."""
    x = np.asarray(x, dtype=np.float64)
    sigma = np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    top = np.abs(x).max(axis=axes, keepdims=True)
    floor = np.sqrt(np.finfo(np.float64).eps) * np.maximum(top, 1e-300)
    return float(np.max(top / np.maximum(sigma, floor), initial=1.0))
