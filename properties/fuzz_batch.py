"""A fuzzing batch: K value sets of one case's shapes checked together, with the verdict each would get alone.

Hypothesis chooses the structure (op, shapes, params, regime) and the first value set; the other K-1
are drawn with NumPy's generator from the example's seed, each array from the regime (and scale) its
strategy drew it from, so a kink, tie or overflow regime's batches hold that regime's values only.
Params (labels, masks, strides) are shared by the whole batch.

The check per value set is `evaluate` with finite differences along random directions (gradcheck
fast_mode's check; torch and JAX compare every element): `projected(target)`. The batch computes the
same thing faster and never judges alone where it could differ:

1. the code under test runs per value set (user code is not assumed vectorisable) on private copies;
   a value set whose run shows anything but a clean run (an exception, a write into an input, `dout`
   or the cache, another dtype or shape, a second call that differs) goes to step 3;
2. the oracles run once for the batch (oracles/batched.py; finite differences in one stacked forward
   where the reference declares it can, BATCH_SAFE) and every comparison of every value set is made at
   once, by the tolerance policy's formula; a value set whose every error is within MARGIN of what is
   allowed passes (a NaN or Inf on either side makes its ratio NaN or Inf: step 3);
3. every other value set is judged by `evaluate` itself, in order, up to the first that fails.

So a batch's verdict on a value set is `evaluate`'s: a batched oracle differs from its per-example
call by rounding (~1e-16 relative; finite differences ~1e-11), and MARGIN leaves half the tolerance
(64 eps sqrt(n) at the least) for it. tests/test_fuzz.py compares the two on every value set.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np

from oracles import batched, numeric
from oracles.base import as_tuple

from . import tolerances
from .evaluate import Evaluation, evaluate
from .execute import arrays_in
from .fuzz_values import ValueSet, draw_value_sets, projected, stream_of, upstream_of
from .spec import Case, OpSpec
from .target import Target
from .verdict import Side

__all__ = ["BATCH_SAFE", "MARGIN", "BatchCheck", "BatchResult", "ValueSet", "draw_value_sets", "floors"]

MARGIN = 0.5
_ARRAY = (np.ndarray, np.generic)  # NumPy returns a 0-d result as a scalar
# catalogue references that take many points in one call (tests/test_fuzz.py checks each, forward and
# backward): "stack", a new leading axis on every input (elementwise ops, and the layers written to
# take one); "rows", each output row from the same input rows only (the points concatenated along axis 0)
BATCH_SAFE = {**dict.fromkeys(("relu", "sigmoid", "tanh", "add_gate", "multiply_gate", "max_gate",
                               "chain_rule_example", "affine", "softmax_cross_entropy", "conv2d", "rnn", "lstm"),
                              "stack"),
              **dict.fromkeys(("softmax", "log_softmax", "max_pool2d", "avg_pool2d"), "rows")}


@dataclass
class BatchResult:
    verified: int = 0  # value sets judged
    exact: int = 0  # ... of them by `evaluate` itself
    kinks: dict = field(default_factory=dict)  # side -> value sets on a kink (a valid subgradient there)
    kink_reason: dict = field(default_factory=dict)
    worst: dict = field(default_factory=dict)  # side -> (ratio, index) of the passing value set nearest to failing
    hazards: list = field(default_factory=list)
    mutated: list = field(default_factory=list)
    failure: tuple[int, ValueSet, Evaluation] | None = None  # the first failing value set


def floors(rtol: float, natural: np.ndarray, noise) -> np.ndarray:
    """tolerances.policy's floor, max(rtol * natural, noise), for many value sets at once."""
    return np.maximum(rtol * natural, noise)


@dataclass
class _Runs:
    """The clean runs of a batch, stacked along axis 0 (one row per value set)."""

    index: list  # which value sets of the batch
    xs: dict  # name -> (K, ...) in the cell's dtype
    params: dict
    outs: tuple  # (K, ...) each
    douts: tuple
    grads: dict


class BatchCheck:
    """The batch check of one target x dtype over `sides` (see the module's docstring)."""

    def __init__(self, spec: OpSpec, target: Target, dtype: str, sides: list[Side]):
        self.spec, self.target, self.dtype, self.sides = spec, projected(target), dtype, list(sides)
        self.reference = target.forward is spec.forward and target.backward is spec.backward \
            and target.judge_forward is None and target.xp_forward is None
        # only a plain target's oracles are the modules' own; a subject's differentiate otherwise
        self.batchable = type(target) is Target and target.xp_forward is None
        self.stacked = BATCH_SAFE.get(spec.name) if self.reference else None
        # finite differences differentiate the forward of the op's reference (beside a planted or user
        # backward, or as the judge of a user's forward): all their points go in one call too
        by_reference = (target.judge_forward or target.forward) is spec.forward
        self.stacked_numeric = BATCH_SAFE.get(spec.name) if self.batchable and by_reference else None
        self.frameworks = [s for s in self.sides if s[0] != "numeric"]
        self.expected: list | None = None  # the output shapes the trusted forward gives (per batch)
        for oracle, _ in self.frameworks:
            batched.warm_up(oracle)

    def exact(self, vs: ValueSet) -> Evaluation:
        """The per-example check of one value set: what the batch must agree with."""
        return evaluate(self.spec, self.target, vs.case, self.dtype, self.sides, dout_seed=vs.dout_seed,
                        stream=stream_of(vs.dout_seed))

    def screened(self, sets: list[ValueSet]) -> np.ndarray:
        """Per value set and side (in `sides`' order), its largest error over the error allowed, as the
        batch measures it; inf where the batch does not judge (step 1 sent it to `evaluate`)."""
        ratios = np.full((len(sets), len(self.sides)), np.inf)
        runs = self._clean_runs(sets)
        if runs is not None:
            ratios[runs.index] = self._screen(runs, range(len(self.sides)))
        return ratios

    def cost(self, sets: list[ValueSet]) -> float:
        """Seconds per value set of what grows with K: the code under test and finite differences (the
        frameworks' batched calls cost about the same for any small K)."""
        t0 = time.perf_counter()
        runs = self._clean_runs(sets)
        if runs is not None:
            self._screen(runs, [j for j, s in enumerate(self.sides) if s[0] == "numeric"])
        return (time.perf_counter() - t0) / len(sets)

    def run(self, sets: list[ValueSet]) -> BatchResult:
        """Judge every value set, up to the first that fails. JAX's batch comes last (a new shape is a
        compile): when the others already single out a value set that fails, it is not needed."""
        res = BatchResult(verified=len(sets))
        ratios = np.full((len(sets), len(self.sides)), np.inf)
        runs = self._clean_runs(sets)
        late = [j for j, s in enumerate(self.sides) if s[0] == "jax"]
        early = [j for j in range(len(self.sides)) if j not in late]
        judged = np.zeros(len(sets), bool)
        for columns in (early, late):
            if runs is not None and columns:
                ratios[np.ix_(runs.index, columns)] = self._screen(runs, columns)
            with np.errstate(invalid="ignore"):
                doubtful = ~(ratios[:, early if columns is early else early + late] <= MARGIN).all(axis=1) & ~judged
            for i in np.flatnonzero(doubtful).tolist():
                judged[i] = True
                if self._judge(sets, i, res):
                    return res
        passed = ~judged
        for j, s in enumerate(self.sides):
            if passed.any():
                i = int(np.argmax(np.where(passed, ratios[:, j], -1.0)))
                if s not in res.worst or ratios[i, j] > res.worst[s][0]:
                    res.worst[s] = (float(ratios[i, j]), i)
        return res

    def _judge(self, sets: list[ValueSet], i: int, res: BatchResult) -> bool:
        """Value set i judged by `evaluate`; True when it fails (the batch stops there)."""
        res.exact += 1
        ev = self.exact(sets[i])
        res.hazards += ev.hazards
        res.mutated += [m for m in ev.mutated if m not in res.mutated]
        if ev.failed:
            res.failure, res.verified = (i, sets[i], ev), i + 1
            return True
        for s, v in ev.sides.items():
            if v.status == "kink":
                res.kinks[s] = res.kinks.get(s, 0) + 1
                res.kink_reason[s] = v.message
            elif v.status == "pass" and v.cmp is not None and (s not in res.worst or v.cmp.ratio > res.worst[s][0]):
                res.worst[s] = (v.cmp.ratio, i)
        return False

    def _clean_runs(self, sets: list[ValueSet]):
        self.expected = None if self.reference else self._expected(sets[0])
        if not (self.batchable and len(sets) > 1 and (self.reference or self.expected is not None)):
            return None
        state = (np.random.get_state(), random.getstate())  # the code under test runs under seeded streams
        try:
            runs = self._stacked_runs(sets) if self.stacked else None
            return runs if runs is not None else self._runs(sets)
        finally:
            np.random.set_state(state[0])
            random.setstate(state[1])

    # ---- step 1: the code under test ------------------------------------------------------------

    def _cast(self, vs: ValueSet):
        """Case.cast's arrays and run_target's params (read here, never written: the code under test
        gets copies)."""
        params = {k: v.astype(self.dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
                  for k, v in vs.case.params.items()}
        return {n: a.astype(self.dtype, copy=False) for n, a in vs.case.arrays.items()}, params

    def _runs(self, sets: list[ValueSet]) -> _Runs | None:
        """The code under test per value set (user code is not assumed vectorisable)."""
        done, index = [], []
        for i, vs in enumerate(sets):
            r = self._run_target(vs, again=i == 0)
            if r is not None:
                done.append(r)
                index.append(i)
        if not done:
            return None
        names = list(done[0][0])
        return _Runs(index=index, xs={n: np.stack([r[0][n] for r in done]) for n in names}, params=done[0][1],
                     outs=tuple(np.stack([np.asarray(r[2][q]) for r in done]) for q in range(len(done[0][2]))),
                     douts=tuple(np.stack([r[3][q] for r in done]) for q in range(len(done[0][3]))),
                     grads={n: np.stack([np.asarray(r[4][j]) for r in done]) for j, n in enumerate(names)})

    def _stacked_runs(self, sets: list[ValueSet]) -> _Runs | None:
        """A BATCH_SAFE reference called once for the whole batch (None: not clean, run per value set)."""
        k, dtype = len(sets), np.dtype(self.dtype)
        arrays, params = self._cast(sets[0])
        xs = {n: np.stack([vs.case.arrays[n] for vs in sets]).astype(dtype) for n in arrays}
        fold = self.stacked == "rows"
        flat = {n: x.reshape((-1, *x.shape[2:])) for n, x in xs.items()} if fold else xs
        mine = [x.copy() for x in flat.values()]
        try:
            out, cache = self.target.forward(*mine, **params)
            outs = as_tuple(out)
            if not all(isinstance(o, np.ndarray) and o.dtype == dtype for o in outs):
                return None
            outs = tuple(o.reshape((k, -1, *o.shape[1:])) if fold else o for o in outs)
            douts = tuple(np.stack(d) for d in zip(*(upstream_of(tuple(o.shape[1:] for o in outs), vs.dout_seed,
                                                                 self.dtype) for vs in sets)))
            my_douts = [(d.reshape((-1, *d.shape[2:])) if fold else d).copy() for d in douts]
            grads = self.target.backward(*my_douts, cache)
        except Exception:
            return None
        grads = (grads,) if len(xs) == 1 and not isinstance(grads, (tuple, list)) else grads
        if not isinstance(grads, (tuple, list)) or len(grads) != len(xs) or not all(
                isinstance(g, np.ndarray) and g.dtype == dtype and g.shape == f.shape
                for g, f in zip(grads, flat.values())):
            return None
        if not (all(_same(m, f) for m, f in zip(mine, flat.values())) and all(
                _same(m, (d.reshape(m.shape))) for m, d in zip(my_douts, douts))):
            return None
        return _Runs(index=list(range(k)), xs=xs, params=params, outs=outs, douts=douts,
                     grads={n: g.reshape(xs[n].shape) for n, g in zip(xs, grads)})

    def _run_target(self, vs: ValueSet, again: bool):
        """(arrays, params, outs, douts, grads) of a clean run, else None (judged by `evaluate`). `again`:
        call it a second time under another stream, as `evaluate` does, to see nondeterminism (a hazard,
        never a verdict: the first value set of each batch is enough to find code that draws from
        np.random)."""
        arrays, params = self._cast(vs)
        first = self._call(arrays, params, vs.dout_seed, None if self.reference else stream_of(vs.dout_seed))
        if first is None:
            return None
        if again and not self.reference:  # nondeterminism is evaluate's to say
            again = self._call(arrays, params, vs.dout_seed, stream_of(vs.dout_seed) ^ 0x5DEECE66D)
            if again is None or not all(np.array_equal(a, b) for a, b in zip(first[0] + first[2], again[0] + again[2])):
                return None
        outs, douts, grads = first
        return arrays, params, outs, douts, grads

    def _call(self, arrays, params, dout_seed, stream):
        dtype, t = np.dtype(self.dtype), self.target
        mine = [a.copy() for a in arrays.values()]
        my_params = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in params.items()}
        if stream is not None:
            np.random.seed(stream % 2**32)
            random.seed(stream)
        try:
            out, cache = t.forward(*mine, **my_params)
            outs = as_tuple(out)
            if not all(isinstance(o, _ARRAY) and o.dtype == dtype for o in outs):
                return None
            if self.expected is not None and [o.shape for o in outs] != self.expected:
                return None
            douts = upstream_of(tuple(o.shape for o in outs), dout_seed, self.dtype)
            my_douts = [d.copy() for d in douts]
            watched = [] if self.reference else [
                (a, a.copy()) for a in arrays_in(cache)
                if not any(np.may_share_memory(a, m) for m in (*mine, *outs))]
            grads = t.backward(*my_douts, cache)
        except Exception:
            return None
        if len(arrays) == 1 and not isinstance(grads, (tuple, list)):
            grads = (grads,)
        if not isinstance(grads, (tuple, list)) or len(grads) != len(arrays) or not all(
                isinstance(g, _ARRAY) and g.dtype == dtype and g.shape == a.shape
                for g, a in zip(grads, arrays.values())):
            return None
        untouched = all(_same(m, a) for m, a in zip(mine, arrays.values())) and all(
            _same(m, d) for m, d in zip(my_douts, douts)) and all(
            _same(my_params[k], v) for k, v in params.items() if isinstance(v, np.ndarray)) and all(
            _same(a, before) for a, before in watched)
        return (outs, douts, tuple(grads)) if untouched else None

    def _expected(self, vs: ValueSet) -> list | None:
        """The output shapes of the forward the target's must match (its judge's, else the op's)."""
        arrays, params = self._cast(vs)
        try:
            out = (self.target.judge_forward or self.spec.forward)(*arrays.values(), **params)[0]
        except Exception:
            return None
        return [np.shape(o) for o in as_tuple(out)]

    # ---- step 2: the oracles and the comparisons, for the whole batch --------------------------

    def _screen(self, runs: _Runs, columns) -> np.ndarray:
        """(K, columns): each clean run's largest error over the error allowed, per side (`columns`: which
        of `sides`)."""
        k = len(runs.index)
        ref_outs = [np.asarray(o, dtype=np.float64) for o in runs.outs]
        ref_grads = {n: np.asarray(g, dtype=np.float64) for n, g in runs.grads.items()}
        size = max((int(np.prod(x.shape[1:])) for x in runs.xs.values()), default=1)
        input_max = np.max([np.abs(x).reshape(k, -1).max(axis=1, initial=0.0) for x in runs.xs.values()], axis=0)
        dout_max = np.max([np.abs(d).reshape(k, -1).max(axis=1, initial=0.0) for d in runs.douts], axis=0) \
            if runs.douts else np.ones(k)
        factors = self._factors(runs, k)
        out = np.empty((k, len(columns)))
        for j, (oracle, device) in enumerate(self.sides[c] for c in columns):
            if oracle == "numeric":
                out[:, j] = self._numeric(runs, ref_grads, size, input_max, dout_max, factors, device)
                continue
            try:
                o_outs, o_grads = batched.vjp_batch(oracle, self.target.oracle_forward(oracle), runs.xs, runs.params,
                                                    runs.douts, dtype=self.dtype, device=device)
            except Exception:  # evaluate says what is wrong
                out[:, j] = np.inf
                continue
            out[:, j] = self._framework(oracle, ref_outs, ref_grads, o_outs, o_grads, size, input_max, dout_max,
                                        factors)
        return out

    def _factors(self, runs: _Runs, k: int) -> np.ndarray | float:
        """The op's tolerance factor per value set (1 without an override)."""
        tol = self.spec.tolerance
        if tol is None:
            return 1.0
        if not callable(tol.rtol_factor):
            return max(float(tol.rtol_factor), 1.0)
        return np.array([max(float(tol.rtol_factor(Case({n: x[i] for n, x in runs.xs.items()}, runs.params))), 1.0)
                         for i in range(k)])

    def _rtol(self, oracle: str, size: int, forward: bool, factors) -> np.ndarray:
        """tolerances.policy's rtol per value set (the op's rtol_min applied as policy applies it)."""
        base = tolerances.policy(self.dtype, size=size, oracle=oracle, forward=forward)
        rtol = base.rtol * np.asarray(factors, dtype=np.float64)
        low = (self.spec.tolerance.rtol_min or {}).get(self.dtype) if self.spec.tolerance is not None else None
        return np.maximum(rtol, low) if low is not None else rtol

    def _framework(self, oracle, ref_outs, ref_grads, o_outs, o_grads, size, input_max, dout_max, factors):
        k = len(input_max)
        if len(o_outs) != len(ref_outs) or any(o.shape != r.shape for o, r in zip(o_outs, ref_outs)):
            return np.full(k, np.inf)
        ratio = np.zeros(k)
        rtol = self._rtol(oracle, size, True, factors)
        natural = np.maximum(input_max, 1.0)
        for r, o in zip(ref_outs, o_outs):
            ratio = np.maximum(ratio, _ratios(r, np.asarray(o, dtype=np.float64), rtol, floors(rtol, natural, 0.0)))
        rtol = self._rtol(oracle, size, False, factors)
        natural = np.maximum(input_max, 1.0) * np.maximum(dout_max, 1e-30)
        for n, g in ref_grads.items():
            ratio = np.maximum(ratio, _ratios(g, np.asarray(o_grads[n], dtype=np.float64), rtol,
                                              floors(rtol, natural, 0.0)))
        return ratio

    def _numeric(self, runs: _Runs, ref_grads, size, input_max, dout_max, factors, device):
        k = len(runs.index)
        directions = numeric.CORROBORATING_DIRECTIONS if self.frameworks else numeric.DIRECTIONS
        # a float64 cell's own forward is the numeric oracle's base point (evaluate.judge_side's `out0`)
        out0s = runs.outs if self.dtype == "float64" and self.target.numeric_inherits_forward else None
        try:
            res = numeric.vjp_projected_batch(self.target.oracle_forward("numeric"),
                                              runs.xs, runs.params, runs.douts, device=device,
                                              directions=directions, out0s=out0s, stacked=self.stacked_numeric)
        except Exception:
            return np.full(k, np.inf)
        rtol = self._rtol("numeric", size, False, factors)
        floor = floors(rtol, np.maximum(input_max, 1.0) * np.maximum(dout_max, 1e-30), res.noise)
        ratio = np.zeros(k)
        for n, g in ref_grads.items():
            dirs = res.dirs[n].reshape(directions, -1)
            flat = g.reshape(k, -1)
            proj, scale = flat @ dirs.T, np.abs(flat) @ np.abs(dirs).T
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                allowed = np.asarray(rtol).reshape(-1, 1) * (np.abs(res.values[n]) + scale) + floor.reshape(-1, 1)
                ratio = np.maximum(ratio, _worst(np.abs(proj - res.values[n]) / allowed))
        return ratio


def _ratios(a: np.ndarray, b: np.ndarray, rtol, floor) -> np.ndarray:
    """compare's largest err / allowed per value set (axis 0) of finite arrays: allowed = atol + rtol |b|,
    atol = rtol * max(|a|, |b|) + floor."""
    k = a.shape[0]
    absb = np.abs(b).reshape(k, -1)
    scale = np.maximum(np.abs(a).reshape(k, -1).max(axis=1, initial=0.0), absb.max(axis=1, initial=0.0))
    rtol = np.asarray(rtol, dtype=np.float64).reshape(-1, 1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        allowed = rtol * scale.reshape(-1, 1) + np.asarray(floor).reshape(-1, 1) + rtol * absb
        return _worst(np.abs(a.reshape(k, -1) - b.reshape(k, -1)) / allowed)


def _same(a, b) -> bool:
    """Unchanged, element for element (a NaN written in place counts as a change: evaluate says what)."""
    return a.shape == b.shape and bool((a == b).all())


def _worst(r: np.ndarray) -> np.ndarray:
    """Largest entry per row; inf where a row has NaN (0/0 or a non-finite oracle value: not comfortable)."""
    worst = r.max(axis=1, initial=0.0)
    return np.where(np.isnan(worst), np.inf, worst)
