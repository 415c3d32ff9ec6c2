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

from .base import Elsewhere, OracleResult, OracleUnavailable, Projection, as_tuple

__all__ = ["CORROBORATING_DIRECTIONS", "DIRECTIONS", "FULL_JACOBIAN_MAX_ELEMENTS", "STEP", "check_available",
           "device_name", "flags", "name", "step_for", "vjp", "vjp_projected", "vjp_projected_batch"]

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
    return _vjp(forward, arrays, params, douts, device=device, directions=directions, out0=out0,
                full_jacobian_max=FULL_JACOBIAN_MAX_ELEMENTS)


def vjp_projected(forward, arrays: dict, params: dict, douts: tuple, *, dtype: str, device: str,
                  directions: int = DIRECTIONS, out0=None) -> OracleResult:
    """`vjp` along random directions whatever the size (a fuzzing campaign's check, gradcheck
    fast_mode's: 2 forwards per direction and array instead of 2 per element; torch and JAX check
    every element beside it)."""
    return _vjp(forward, arrays, params, douts, device=device, directions=directions, out0=out0, full_jacobian_max=-1)


def _vjp(forward, arrays: dict, params: dict, douts: tuple, *, device: str, directions: int, out0,
         full_jacobian_max: int) -> OracleResult:
    check_available(device)
    if directions < 1:
        raise ValueError(f"numeric: directions must be at least 1, got {directions}")
    xs = {n: np.array(a, dtype=np.float64) for n, a in arrays.items()}
    ds = [np.asarray(d, dtype=np.float64) for d in douts]

    def g(points: list[dict]) -> list[float]:
        # a forward in another process (oracles.base.Elsewhere) takes every point in one call
        outs = forward.batch([tuple(p.values()) for p in points], params) if isinstance(forward, Elsewhere) else \
            [forward(*p.values(), **params) for p in points]
        return [float(sum(np.sum(np.asarray(o, dtype=np.float64) * d) for o, d in zip(as_tuple(out), ds)))
                for out in outs]

    # Rounding in g is ~eps * sum|d * out| (the terms, not their possibly cancelling sum); a difference
    # quotient divides it by the step. That is this oracle's absolute noise floor.
    outs0 = as_tuple(forward(*xs.values(), **params) if out0 is None else out0)
    magnitude = float(sum(np.sum(np.abs(np.asarray(o, dtype=np.float64) * d)) for o, d in zip(outs0, ds)))
    h_min = min((float(step_for(x).min(initial=STEP)) for x in xs.values()), default=STEP)
    noise = 8 * np.finfo(np.float64).eps * magnitude / h_min

    total = sum(a.size for a in xs.values())
    # every point first (x with one element, or the whole array along one direction, moved by ±h), then
    # the forward at all of them, then the difference quotients
    points, steps = [], {}
    if total > full_jacobian_max:
        all_dirs = dict(zip(xs, _directions(tuple(x.shape for x in xs.values()), directions)))
    for n, x in xs.items():
        if total <= full_jacobian_max:
            steps[n] = step_for(x).reshape(-1)
            for i in range(x.size):
                for sign in (1, -1):
                    moved = x.copy()
                    moved.reshape(-1)[i] += sign * steps[n][i]
                    points.append({**xs, n: moved})
        else:
            steps[n] = STEP * max(1.0, float(np.abs(x).max(initial=0.0)))
            for u in all_dirs[n]:
                points += [{**xs, n: x + steps[n] * u}, {**xs, n: x - steps[n] * u}]
    values = iter(g(points))
    grads = {}
    for n, x in xs.items():
        if total <= full_jacobian_max:
            grads[n] = np.array([(next(values) - next(values)) / (2 * h) for h in steps[n]]).reshape(x.shape)
        else:
            grads[n] = Projection(dirs=all_dirs[n], values=np.array(
                [(next(values) - next(values)) / (2 * steps[n]) for _ in range(directions)]))
    projected = total > full_jacobian_max
    return OracleResult(out=None, grads=grads, info={"step": STEP, "noise": noise,
                                                     "directions": directions if projected else None})


def vjp_projected_batch(forward, value_sets: list[dict], params: dict, douts: list[tuple], *, device: str,
                        directions: int = DIRECTIONS, out0s: list | None = None,
                        stacked: bool = False) -> list[OracleResult]:
    """`vjp_projected` for each of K value sets of the same shapes (a fuzzing batch). `stacked`: the
    forward accepts a leading batch axis on every array (an elementwise op) and takes all K value sets'
    points in one call; otherwise one call per point, exactly as `vjp_projected` makes them."""
    check_available(device)
    if directions < 1:
        raise ValueError(f"numeric: directions must be at least 1, got {directions}")
    names = list(value_sets[0])
    dirs = dict(zip(names, _directions(tuple(np.shape(value_sets[0][n]) for n in names), directions)))
    per_set, points = [], []
    for k, arrays in enumerate(value_sets):
        xs = {n: np.array(a, dtype=np.float64) for n, a in arrays.items()}
        steps = {n: STEP * max(1.0, float(np.abs(x).max(initial=0.0))) for n, x in xs.items()}
        base = None if out0s is None else out0s[k]
        if base is None:
            points.append(xs)
        for n, x in xs.items():
            for u in dirs[n]:
                points += [{**xs, n: x + steps[n] * u}, {**xs, n: x - steps[n] * u}]
        per_set.append((xs, [np.asarray(d, dtype=np.float64) for d in douts[k]], steps, base))
    if stacked:
        outs = as_tuple(forward(*(np.stack([p[n] for p in points]) for n in names), **params))
        outs = [tuple(o[i] for o in outs) for i in range(len(points))]
    else:
        outs = [forward(*p.values(), **params) for p in points]
    results, at = [], 0
    for xs, ds, steps, base in per_set:
        if base is None:
            base, at = outs[at], at + 1
        magnitude = float(sum(np.sum(np.abs(np.asarray(o, dtype=np.float64) * d)) for o, d in zip(as_tuple(base), ds)))
        h_min = min((float(step_for(x).min(initial=STEP)) for x in xs.values()), default=STEP)
        # <d, f(point)> for this value set's points at once (the per-example oracle sums point by point:
        # the same terms, summed in another order)
        n_points = 2 * directions * len(xs)
        mine = outs[at:at + n_points]
        g = sum((np.stack([np.asarray(o[i], dtype=np.float64) for o in map(as_tuple, mine)]) * d).reshape(n_points, -1)
                .sum(axis=1) for i, d in enumerate(ds)) if ds else np.zeros(n_points)
        at += n_points
        grads = {}
        for j, n in enumerate(xs):
            pair = g[2 * directions * j:2 * directions * (j + 1)].reshape(directions, 2)
            grads[n] = Projection(dirs=dirs[n], values=(pair[:, 0] - pair[:, 1]) / (2 * steps[n]))
        results.append(OracleResult(out=None, grads=grads, info={
            "step": STEP, "noise": 8 * np.finfo(np.float64).eps * magnitude / h_min, "directions": directions}))
    return results
