"""Float64 central finite differences of the target's forward: the judge that needs no framework.

The VJP of f with upstream gradient d is the gradient of the scalar g(x) = <d, f(x)>.
Small inputs get every component of that gradient (2 forwards per element); large ones get a few
directional derivatives <grad g, u> along random directions u (2 forwards per direction and
array), so the cost stays a constant number of forwards whatever the size.

How many directions depends on the oracle's role (the caller says, `directions=`): where it decides
alone (no framework oracle, or the frameworks disagree with the target) it takes DIRECTIONS per array;
where torch or JAX has already checked the same gradients element by element, it takes one per array,
the check `torch.autograd.gradcheck(fast_mode=True)` makes (one random projection per input).
"""
from __future__ import annotations

import functools

import numpy as np

from .base import OracleResult, OracleUnavailable, Projection, as_tuple

__all__ = ["CORROBORATING_DIRECTIONS", "DIRECTIONS", "FULL_JACOBIAN_MAX_ELEMENTS", "STEP", "check_available",
           "device_name", "flags", "name", "step_for", "vjp"]

name = "numeric"
FULL_JACOBIAN_MAX_ELEMENTS = 128
DIRECTIONS = 3  # deciding alone: an error e escapes all three only if |<e, u>| is small for each
CORROBORATING_DIRECTIONS = 1  # beside an element-wise framework check, as gradcheck's fast_mode
# Central differences have truncation error ~h^2 f''' and rounding error ~eps f / h; h = eps^(1/3)
# (times the input's scale) balances them at ~eps^(2/3) ≈ 4e-11 relative.
STEP = np.finfo(np.float64).eps ** (1 / 3)


def flags() -> dict:
    return {}


def check_available(device: str) -> None:
    if device != "cpu":
        raise OracleUnavailable("numeric: finite differences run on the CPU in float64 only")


def device_name(device: str) -> str:
    return "cpu"


def step_for(x: np.ndarray) -> np.ndarray:
    """Per-element step: relative to the element's magnitude, never below STEP."""
    return STEP * np.maximum(1.0, np.abs(x))


def _directions(shapes: tuple, k: int = DIRECTIONS) -> tuple[np.ndarray, ...]:
    """k random directions per array, drawn in order from a fixed seed: the same shapes always get
    the same directions (read-only arrays; they go into the results). Cached: drawing them cost as
    much as the forwards for medium inputs, and a run sees the same shapes again and again."""
    if sum(k * int(np.prod(s)) for s in shapes) <= _DIRECTIONS_CACHE_ELEMENTS:
        return _directions_cached(shapes, k)
    return _draw_directions(shapes, k)


_DIRECTIONS_CACHE_ELEMENTS = 2**18  # 2 MiB of float64 per entry at most, 32 entries


def _draw_directions(shapes: tuple, k: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(20240611)  # fixed: the same case always gets the same directions
    out = []
    for s in shapes:
        d = rng.standard_normal((k, *s))
        d.flags.writeable = False
        out.append(d)
    return tuple(out)


_directions_cached = functools.lru_cache(maxsize=32)(_draw_directions)


def vjp(forward, arrays: dict, params: dict, douts: tuple, *, dtype: str, device: str,
        directions: int = DIRECTIONS, out0=None) -> OracleResult:
    """Finite differences of `forward(*arrays, **params) -> out` (NumPy). `out0`: its output at
    exactly these float64 inputs, when the caller has it (a float64 cell's own forward): it spares
    one forward here."""
    check_available(device)
    if directions < 1:
        raise ValueError(f"numeric: directions must be at least 1, got {directions}")
    xs = {n: np.array(a, dtype=np.float64) for n, a in arrays.items()}
    ds = [np.asarray(d, dtype=np.float64) for d in douts]

    def g(values: dict) -> float:
        outs = as_tuple(forward(*values.values(), **params))
        return float(sum(np.sum(np.asarray(o, dtype=np.float64) * d) for o, d in zip(outs, ds)))

    # Rounding in g is ~eps * sum|d * out| (the terms, not their possibly cancelling sum); a difference
    # quotient divides it by the step. That is this oracle's absolute noise floor.
    outs0 = as_tuple(forward(*xs.values(), **params) if out0 is None else out0)
    magnitude = float(sum(np.sum(np.abs(np.asarray(o, dtype=np.float64) * d)) for o, d in zip(outs0, ds)))
    h_min = min((float(step_for(x).min(initial=STEP)) for x in xs.values()), default=STEP)
    noise = 8 * np.finfo(np.float64).eps * magnitude / h_min

    total = sum(a.size for a in xs.values())
    grads = {}
    if total > FULL_JACOBIAN_MAX_ELEMENTS:
        all_dirs = dict(zip(xs, _directions(tuple(x.shape for x in xs.values()), directions)))
    for n, x in xs.items():
        if total <= FULL_JACOBIAN_MAX_ELEMENTS:
            grad = np.zeros_like(x)
            h = step_for(x)
            flat, hflat, gflat = x.reshape(-1), h.reshape(-1), grad.reshape(-1)
            for i in range(flat.size):
                orig = flat[i]
                flat[i] = orig + hflat[i]
                plus = g(xs)
                flat[i] = orig - hflat[i]
                minus = g(xs)
                flat[i] = orig
                gflat[i] = (plus - minus) / (2 * hflat[i])
            grads[n] = grad
        else:
            dirs = all_dirs[n]
            values = np.empty(directions)
            h = STEP * max(1.0, float(np.abs(x).max(initial=0.0)))
            for k, u in enumerate(dirs):
                xs[n] = x + h * u
                plus = g(xs)
                xs[n] = x - h * u
                minus = g(xs)
                values[k] = (plus - minus) / (2 * h)
            xs[n] = x
            grads[n] = Projection(dirs=dirs, values=values)
    projected = total > FULL_JACOBIAN_MAX_ELEMENTS
    return OracleResult(out=None, grads=grads, info={"step": STEP, "noise": noise,
                                                     "directions": directions if projected else None})
