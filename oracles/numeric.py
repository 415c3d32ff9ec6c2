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
                        stacked: str | None = None, row_arrays: tuple = ()) -> "ProjectedBatch":
    """`vjp_projected` for each of K value sets of the same shapes (a fuzzing batch): the same points,
    steps, directions and noise estimate; <d, f(point)> summed in another order. `stacked`: how the
    forward takes many points in one call: "stack" (an elementwise forward: a new leading axis on every
    array), "rows" (a forward whose output rows depend on the same input rows only: the points'
    arrays concatenated along axis 0), None (one call per point, as `vjp_projected`). `row_arrays`:
    with None, the arrays whose rows (axis 0) the outputs' rows depend on alone (affine's x: w and b
    are shared by every row): a value set's points that move only those go in one call, concatenated."""
    check_available(device)
    if directions < 1:
        raise ValueError(f"numeric: directions must be at least 1, got {directions}")
    names = list(value_sets[0])
    k = len(value_sets)
    xs = {n: np.stack([np.asarray(v[n], dtype=np.float64) for v in value_sets]) for n in names}  # (K, ...)
    dirs = dict(zip(names, _directions(tuple(xs[n].shape[1:] for n in names), directions)))
    flat = {n: np.abs(x).reshape(k, -1) for n, x in xs.items()}
    steps = {n: STEP * np.maximum(1.0, a.max(axis=1, initial=0.0)) for n, a in flat.items()}  # (K,)
    # the points of one value set, in vjp's order: each array moved along each direction, + then -
    moves = [(n, j, sign) for n in names for j in range(directions) for sign in (1.0, -1.0)]
    p = len(moves) + (out0s is None)
    moved = {n: [xs[n] + sign * (steps[n].reshape((k,) + (1,) * (xs[n].ndim - 1)) * dirs[n][j])
                 for m, j, sign in moves if m == n] for n in names}
    args = []  # per point of the batch, value set by value set: one array per name
    for i in range(k):
        at = {n: 0 for n in names}
        base = tuple(xs[n][i] for n in names)
        if out0s is None:
            args.append(base)
        for n, _, _ in moves:
            args.append(tuple(moved[n][at[n]][i] if m == n else b for m, b in zip(names, base)))
            at[n] += 1
    if stacked == "stack":
        outs = as_tuple(forward(*(np.stack([a[q] for a in args]) for q in range(len(names))), **params))
    elif stacked == "rows":
        rows = np.shape(args[0][0])[0]
        outs = as_tuple(forward(*(np.concatenate([a[q] for a in args]) for q in range(len(names))), **params))
        outs = tuple(np.reshape(o, (len(args), rows) + np.shape(o)[1:]) for o in outs)
    else:
        each = _per_point(forward, args, params, k, names, row_arrays, [None] * (out0s is None) + [n for n, _, _ in moves])
        outs = tuple(np.stack([np.asarray(e[q]) for e in each]) for q in range(len(each[0])))
    ds = [np.stack([np.asarray(d[q], dtype=np.float64) for d in douts]) for q in range(len(douts[0]))]
    shaped = [np.asarray(o, dtype=np.float64).reshape((k, p) + d.shape[1:]) for o, d in zip(outs, ds)]
    # <d, f(point)> for every point: (K, P)
    g = sum((o * d[:, None]).reshape(k, p, -1).sum(axis=2) for o, d in zip(shaped, ds))
    if out0s is None:
        base_outs, g = [o[:, 0] for o in shaped], g[:, 1:]
    else:
        base_outs = [np.stack([np.asarray(as_tuple(b)[q], dtype=np.float64) for b in out0s]) for q in range(len(ds))]
    # Rounding in g is ~eps * sum|d * out|; a difference quotient divides it by the step (vjp's noise)
    magnitude = sum(np.abs(o * d).reshape(k, -1).sum(axis=1) for o, d in zip(base_outs, ds))
    # vjp's smallest step, min(step_for(x).min(initial=STEP)): STEP itself (step_for is never below it)
    noise = 8 * np.finfo(np.float64).eps * magnitude / STEP
    g = g.reshape(k, len(names), directions, 2)
    values = {n: (g[:, q, :, 0] - g[:, q, :, 1]) / (2 * steps[n][:, None]) for q, n in enumerate(names)}
    return ProjectedBatch(dirs=dirs, values=values, noise=noise)


def _per_point(forward, args: list, params: dict, k: int, names: list, row_arrays: tuple, movers: list) -> list:
    """The forward at each point (`args`, K value sets of len(movers) points each; movers[j]: the array
    point j moves, None for the base point), in order; points of a value set that move only
    `row_arrays` share one call, those arrays concatenated along axis 0."""
    rowed = [q for q, n in enumerate(names) if n in row_arrays]
    joint = [j for j, m in enumerate(movers) if m is None or m in row_arrays] if rowed else []
    per = len(movers)
    each = [None] * len(args)
    for i in range(k):
        block = args[i * per:(i + 1) * per]
        if len(joint) > 1:
            rows = np.shape(block[0][rowed[0]])[0]
            call = [np.concatenate([block[j][q] for j in joint]) if q in rowed else block[0][q] for q in range(len(names))]
            res = [np.asarray(o) for o in as_tuple(forward(*call, **params))]
            for c, j in enumerate(joint):
                each[i * per + j] = tuple(o[c * rows:(c + 1) * rows] for o in res)
        for j in range(per):
            if each[i * per + j] is None:
                each[i * per + j] = as_tuple(forward(*block[j], **params))
    return each


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
