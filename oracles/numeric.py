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
from dataclasses import dataclass

import numpy as np

from .base import Elsewhere, OracleResult, OracleUnavailable, Projection, as_tuple

__all__ = ["CORROBORATING_DIRECTIONS", "DIRECTIONS", "FULL_JACOBIAN_MAX_ELEMENTS", "STEP", "check_available",
           "device_name", "flags", "name", "step_for", "vjp", "vjp_projected", "vjp_projected_batch", "ProjectedBatch"]

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
        directions: int = DIRECTIONS, out0=None, step_scale: float = 1.0) -> OracleResult:
    """Finite differences of `forward(*arrays, **params) -> out` (NumPy). `out0`: its output at
    exactly these float64 inputs, when the caller has it (a float64 cell's own forward): it spares
    one forward here. `step_scale`: steps that many times `step_for`'s (a point where the forward
    curves sharply within one step: properties/evaluate.py, `judge_side`)."""
    return _vjp(forward, arrays, params, douts, device=device, directions=directions, out0=out0,
                full_jacobian_max=FULL_JACOBIAN_MAX_ELEMENTS, step_scale=step_scale)


def vjp_projected(forward, arrays: dict, params: dict, douts: tuple, *, dtype: str, device: str,
                  directions: int = DIRECTIONS, out0=None) -> OracleResult:
    """`vjp` along random directions whatever the size (a fuzzing campaign's check, gradcheck
    fast_mode's: 2 forwards per direction and array instead of 2 per element; torch and JAX check
    every element beside it)."""
    return _vjp(forward, arrays, params, douts, device=device, directions=directions, out0=out0, full_jacobian_max=-1)


def _vjp(forward, arrays: dict, params: dict, douts: tuple, *, device: str, directions: int, out0,
         full_jacobian_max: int, step_scale: float = 1.0) -> OracleResult:
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
    h_min = step_scale * min((float(step_for(x).min(initial=STEP)) for x in xs.values()), default=STEP)
    noise = 8 * np.finfo(np.float64).eps * magnitude / h_min

    total = sum(a.size for a in xs.values())
    # every point first (x with one element, or the whole array along one direction, moved by ±h), then
    # the forward at all of them, then the difference quotients
    points, steps = [], {}
    if total > full_jacobian_max:
        all_dirs = dict(zip(xs, _directions(tuple(x.shape for x in xs.values()), directions)))
    for n, x in xs.items():
        if total <= full_jacobian_max:
            steps[n] = step_scale * step_for(x).reshape(-1)
            for i in range(x.size):
                for sign in (1, -1):
                    moved = x.copy()
                    moved.reshape(-1)[i] += sign * steps[n][i]
                    points.append({**xs, n: moved})
        else:
            steps[n] = step_scale * STEP * max(1.0, float(np.abs(x).max(initial=0.0)))
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
    return OracleResult(out=None, grads=grads, info={"step": step_scale * STEP, "noise": noise,
                                                     "directions": directions if projected else None})


def vjp_projected_batch(forward, value_sets: dict, params: dict, douts: tuple, *, device: str,
                        directions: int = DIRECTIONS, out0s: tuple | None = None,
                        stacked: str | None = None) -> "ProjectedBatch":
    """`vjp_projected` for each of K value sets of the same shapes (a fuzzing batch): the same points,
    steps, directions and noise estimate; <d, f(point)> summed in another order. `value_sets`: name ->
    (K, ...); `douts`: (K, ...) per output; `out0s`: the outputs at the value sets themselves, when the
    caller has them. `stacked`: how the forward takes many points in one call: "stack" (a new leading
    axis on every array: an elementwise forward, or one written to take it), "rows" (a forward whose
    output rows depend on the same input rows only: the points' arrays concatenated along axis 0),
    None (one call per point, as `vjp_projected`)."""
    check_available(device)
    if directions < 1:
        raise ValueError(f"numeric: directions must be at least 1, got {directions}")
    names = list(value_sets)
    xs = {n: np.asarray(x, dtype=np.float64) for n, x in value_sets.items()}  # (K, ...)
    k = len(xs[names[0]])
    dirs = dict(zip(names, _directions(tuple(xs[n].shape[1:] for n in names), directions)))
    flat = {n: np.abs(x).reshape(k, -1) for n, x in xs.items()}
    steps = {n: STEP * np.maximum(1.0, a.max(axis=1, initial=0.0)) for n, a in flat.items()}  # (K,)
    # the points of one value set, in vjp's order: each array moved along each direction, + then -
    moves = [(n, j, sign) for n in names for j in range(directions) for sign in (1.0, -1.0)]
    p = len(moves) + (out0s is None)

    def moved(n, j, sign):  # (K, ...): every value set's array n moved along direction j
        return xs[n] + sign * (steps[n].reshape((k,) + (1,) * (xs[n].ndim - 1)) * dirs[n][j])

    if stacked in ("stack", "rows"):  # every point of the batch in one call, built array by array
        first = int(out0s is None)
        columns = []
        for n in names:
            a = np.repeat(xs[n][:, None], p, axis=1)  # (K, P, ...): the base point everywhere
            for at, (m, j, sign) in enumerate(moves):
                if m == n:
                    a[:, first + at] = moved(n, j, sign)
            # "stack": a new leading axis of K * P points; "rows": the points' rows one after another
            columns.append(a.reshape((k * p,) + xs[n].shape[1:]) if stacked == "stack"
                           else a.reshape((-1,) + xs[n].shape[2:]))
        outs = as_tuple(forward(*columns, **params))
        if stacked == "rows":
            outs = tuple(np.reshape(o, (k * p, xs[names[0]].shape[1]) + np.shape(o)[1:]) for o in outs)
    else:
        moves_of = {n: [moved(m, j, sign) for m, j, sign in moves if m == n] for n in names}
        each = []  # the forward at every point, value set by value set
        for i in range(k):
            at = {n: 0 for n in names}
            base = tuple(xs[n][i] for n in names)
            if out0s is None:
                each.append(as_tuple(forward(*base, **params)))
            for n, _, _ in moves:
                each.append(as_tuple(forward(*(moves_of[n][at[n]][i] if m == n else b for m, b in zip(names, base)),
                                             **params)))
                at[n] += 1
        outs = tuple(np.stack([np.asarray(e[q]) for e in each]) for q in range(len(each[0])))
    ds = [np.asarray(d, dtype=np.float64) for d in douts]
    shaped = [np.asarray(o, dtype=np.float64).reshape((k, p) + d.shape[1:]) for o, d in zip(outs, ds)]
    # <d, f(point)> for every point: (K, P)
    g = sum((o * d[:, None]).reshape(k, p, -1).sum(axis=2) for o, d in zip(shaped, ds))
    if out0s is None:
        base_outs, g = [o[:, 0] for o in shaped], g[:, 1:]
    else:
        base_outs = [np.asarray(o, dtype=np.float64) for o in out0s]
    # Rounding in g is ~eps * sum|d * out|; a difference quotient divides it by the step (vjp's noise)
    magnitude = sum(np.abs(o * d).reshape(k, -1).sum(axis=1) for o, d in zip(base_outs, ds))
    # vjp's smallest step, min(step_for(x).min(initial=STEP)): STEP itself (step_for is never below it)
    noise = 8 * np.finfo(np.float64).eps * magnitude / STEP
    g = g.reshape(k, len(names), directions, 2)
    values = {n: (g[:, q, :, 0] - g[:, q, :, 1]) / (2 * steps[n][:, None]) for q, n in enumerate(names)}
    return ProjectedBatch(dirs=dirs, values=values, noise=noise)


@dataclass
class ProjectedBatch:
    """`vjp_projected_batch`'s answer: value set i's result is OracleResult(out=None, grads={n:
    Projection(dirs[n], values[n][i])}, info={"noise": noise[i], ...})."""

    dirs: dict  # name -> (directions, *shape), shared by every value set
    values: dict  # name -> (K, directions)
    noise: np.ndarray  # (K,)

    def result(self, i: int) -> OracleResult:
        return OracleResult(out=None, grads={n: Projection(dirs=d, values=self.values[n][i]) for n, d in self.dirs.items()},
                            info={"step": STEP, "noise": float(self.noise[i]), "directions": len(next(iter(
                                self.dirs.values()), ()))})
