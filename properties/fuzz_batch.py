"""A fuzzing batch: K value sets of one case's shapes checked together, with the verdict each would get alone.

Hypothesis chooses the structure (op, shapes, params, regime) and the first value set; the other K-1
are drawn with NumPy's generator from the example's seed, each array from the regime (and scale) its
strategy drew it from, so a kink, tie or overflow regime's batches hold that regime's values only.
Params (labels, masks, strides) are shared by the whole batch.

The check per value set is `evaluate` with finite differences along random directions (gradcheck
fast_mode's check; torch and JAX compare every element): `projected(target)`. The batch computes the
same thing faster and never judges alone where it could differ:

1. the code under test runs per value set (user code is not assumed vectorisable) on private copies;
   a value set whose run shows anything but clean finite values (an exception, a write into an input,
   `dout` or the cache, another dtype or shape, a second call that differs) goes to step 3;
2. the oracles run once for the batch (oracles/batched.py; finite differences in one stacked forward
   where the reference is elementwise, BATCH_SAFE) and every comparison of every value set is made at
   once, by the tolerance policy's formula; a value set whose every error is within MARGIN of what is
   allowed passes;
3. every other value set is judged by `evaluate` itself, in order, up to the first that fails.

So a batch's verdict on a value set is `evaluate`'s: a batched oracle differs from its per-example
call by rounding (~1e-16 relative; finite differences ~1e-11), and MARGIN leaves half the tolerance
(64 eps sqrt(n) at the least) for it. tests/test_fuzz.py compares the two on every value set.
"""
from __future__ import annotations

import dataclasses
import functools
import random
from dataclasses import dataclass, field

import numpy as np

import oracles
from oracles import batched, numeric
from oracles.base import OracleUnavailable, as_tuple

from . import tolerances
from .evaluate import Evaluation, evaluate
from .execute import _arrays_in
from .spec import Case, OpSpec
from .strategies import REGIMES, upstream
from .target import Target
from .verdict import Side

__all__ = ["BATCH_SAFE", "MARGIN", "BatchCheck", "BatchResult", "ProjectedTarget", "ValueSet", "draw_value_sets",
           "floors", "projected", "stream_of"]

MARGIN = 0.5
_ARRAY = (np.ndarray, np.generic)  # NumPy returns a 0-d result as a scalar
# catalogue references that are elementwise: a leading batch axis on every input gives the stacked
# outputs (tests/test_fuzz.py checks it, bit for bit)
BATCH_SAFE = frozenset({"relu", "sigmoid", "tanh", "add_gate", "multiply_gate", "max_gate", "chain_rule_example"})


@dataclass(frozen=True)
class ProjectedTarget(Target):
    """A target whose finite differences project on random directions at every size (the fuzz check)."""

    def oracle_vjp(self, oracle: str):
        return numeric.vjp_projected if oracle == "numeric" else super().oracle_vjp(oracle)


def projected(target: Target) -> ProjectedTarget:
    return ProjectedTarget(**{f.name: getattr(target, f.name) for f in dataclasses.fields(Target)})


def stream_of(dout_seed: int) -> int:
    """The global random stream a value set's code under test runs under (runner.GroupSearch.check's)."""
    return dout_seed * 2654435761 % 2**32


@dataclass
class ValueSet:
    case: Case
    dout_seed: int


# The drawn value sets' upstream gradients come from this many seeds (strategies.upstream, cached):
# seeding a NumPy generator costs more than checking a small case. The inputs vary freely.
DOUT_SEEDS = 256


@functools.lru_cache(maxsize=8192)
def _upstream(shapes: tuple, dout_seed: int, dtype: str) -> tuple[np.ndarray, ...]:
    douts = tuple(np.asarray(d, dtype=dtype) for d in upstream(shapes, dout_seed))
    for d in douts:
        d.flags.writeable = False
    return douts


def draw_value_sets(case: Case, origins: dict, dout_seed: int, seed: int, k: int) -> list[ValueSet]:
    """`case` (Hypothesis's value set) and k-1 more of its shapes: each array in `origins` (name ->
    (regime, scale)) redrawn from its regime, the others kept; upstream seeds drawn alongside."""
    rng = np.random.default_rng(seed)
    sets = [ValueSet(case, dout_seed)]
    for _ in range(k - 1):
        arrays = {n: np.asarray(REGIMES[origins[n][0]].sample(rng, a.shape) * origins[n][1], dtype=np.float64)
                  if n in origins else a for n, a in case.arrays.items()}
        sets.append(ValueSet(Case(arrays, case.params), int(rng.integers(0, DOUT_SEEDS))))
    return sets


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


class BatchCheck:
    """The batch check of one target x dtype over `sides` (see the module's docstring)."""

    def __init__(self, spec: OpSpec, target: Target, dtype: str, sides: list[Side]):
        self.spec, self.target, self.dtype, self.sides = spec, projected(target), dtype, list(sides)
        self.reference = target.forward is spec.forward and target.backward is spec.backward \
            and target.judge_forward is None and target.xp_forward is None
        # only a plain target's oracles are the modules' own; a subject's differentiate otherwise
        self.batchable = type(target) is Target and target.xp_forward is None
        self.stacked = self.reference and spec.name in BATCH_SAFE
        self.frameworks = [s for s in self.sides if s[0] != "numeric"]
        for oracle, _ in self.frameworks:
            batched.warm_up(oracle)

    def exact(self, vs: ValueSet) -> Evaluation:
        """The per-example check of one value set: what the batch must agree with."""
        return evaluate(self.spec, self.target, vs.case, self.dtype, self.sides, dout_seed=vs.dout_seed,
                        stream=stream_of(vs.dout_seed))

    def run(self, sets: list[ValueSet]) -> BatchResult:
        res = BatchResult()
        self.expected = None if self.reference else self._expected(sets[0])
        batch = self.batchable and len(sets) > 1 and (self.reference or self.expected is not None)
        state = (np.random.get_state(), random.getstate())  # the code under test runs under seeded streams
        try:
            clean = [self._run_target(vs, again=i == 0) for i, vs in enumerate(sets)] if batch else [None] * len(sets)
        finally:
            np.random.set_state(state[0])
            random.setstate(state[1])
        ratios = self._screen([c for c in clean if c is not None])
        it = iter(ratios)
        for i, (vs, c) in enumerate(zip(sets, clean)):
            r = next(it) if c is not None else None
            res.verified += 1
            if r is not None and all(np.isfinite(v) and v <= MARGIN for v in r.values()):
                for s, v in r.items():
                    if s not in res.worst or v > res.worst[s][0]:
                        res.worst[s] = (v, i)
                continue
            res.exact += 1
            ev = self.exact(vs)
            res.hazards += ev.hazards
            res.mutated += [m for m in ev.mutated if m not in res.mutated]
            if ev.failed:
                res.failure = (i, vs, ev)
                return res
            for s, v in ev.sides.items():
                if v.status == "kink":
                    res.kinks[s] = res.kinks.get(s, 0) + 1
                    res.kink_reason[s] = v.message
                elif v.status == "pass" and v.cmp is not None and (s not in res.worst or v.cmp.ratio > res.worst[s][0]):
                    res.worst[s] = (v.cmp.ratio, i)
        return res

    # ---- step 1: the code under test, per value set -------------------------------------------

    def _run_target(self, vs: ValueSet, again: bool):
        """(arrays, params, outs, douts, grads) of a clean run, else None (judged by `evaluate`). `again`:
        call it a second time under another stream, as `evaluate` does, to see nondeterminism (a hazard,
        never a verdict: the first value set of each batch is enough to find code that draws from
        np.random)."""
        dtype, t = self.dtype, self.target
        arrays = vs.case.cast(dtype)
        params = {k: v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
                  for k, v in vs.case.params.items()}
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
            if not all(isinstance(o, _ARRAY) and o.dtype == dtype and np.isfinite(o).all() for o in outs):
                return None
            if self.expected is not None and [o.shape for o in outs] != self.expected:
                return None
            douts = _upstream(tuple(o.shape for o in outs), dout_seed, self.dtype)
            my_douts = [d.copy() for d in douts]
            watched = [] if self.reference else [
                (a, a.copy()) for a in _arrays_in(cache)
                if not any(np.may_share_memory(a, m) for m in (*mine, *outs))]
            grads = t.backward(*my_douts, cache)
        except Exception:
            return None
        if len(arrays) == 1 and not isinstance(grads, (tuple, list)):
            grads = (grads,)
        if not isinstance(grads, (tuple, list)) or len(grads) != len(arrays) or not all(
                isinstance(g, _ARRAY) and g.dtype == dtype and g.shape == a.shape and np.isfinite(g).all()
                for g, a in zip(grads, arrays.values())):
            return None
        untouched = all(np.array_equal(m, a) for m, a in zip(mine, arrays.values())) and all(
            np.array_equal(m, d) for m, d in zip(my_douts, douts)) and all(
            np.array_equal(my_params[k], v) for k, v in params.items() if isinstance(v, np.ndarray)) and all(
            np.array_equal(a, before) for a, before in watched)
        return (outs, douts, tuple(grads)) if untouched else None

    expected: list | None = None  # the output shapes the trusted forward gives (set per batch)

    def _expected(self, vs: ValueSet) -> list | None:
        """The output shapes of the forward the target's must match (its judge's, else the op's)."""
        params = {k: v.astype(self.dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
                  for k, v in vs.case.params.items()}
        try:
            out = (self.target.judge_forward or self.spec.forward)(*vs.case.cast(self.dtype).values(), **params)[0]
        except Exception:
            return None
        return [np.shape(o) for o in as_tuple(out)]

    # ---- step 2: the oracles and the comparisons, for the whole batch --------------------------

    def _screen(self, runs: list) -> list[dict]:
        """Per clean run, side -> its largest error over the error allowed (inf: not comparable)."""
        if not runs:
            return []
        names = list(runs[0][0])
        k = len(runs)
        ref_outs = [np.stack([r[2][i] for r in runs]).astype(np.float64) for i in range(len(runs[0][2]))]
        ref_grads = {n: np.stack([r[4][j] for r in runs]).astype(np.float64) for j, n in enumerate(names)}
        douts = [np.stack([r[3][i] for r in runs]) for i in range(len(runs[0][3]))]
        size = max((a.size for a in runs[0][0].values()), default=1)
        input_max = np.array([max((float(np.abs(a).max(initial=0.0)) for a in r[0].values()), default=1.0)
                              for r in runs])
        dout_max = np.max(np.stack([np.abs(d).reshape(k, -1).max(axis=1, initial=0.0) for d in douts]), axis=0) \
            if douts else np.ones(k)
        factors = self._factors(runs)
        out = [{} for _ in runs]
        params = runs[0][1]
        for side in self.sides:
            oracle, device = side
            if oracle == "numeric":
                ratio = self._numeric(runs, ref_grads, size, input_max, dout_max, factors, device)
            else:
                xs = {n: np.stack([r[0][n] for r in runs]) for n in names}
                try:
                    vjp = batched.torch_vjp_batch if oracle == "torch" else batched.jax_vjp_batch
                    o_outs, o_grads = vjp(self.target.oracle_forward(oracle), xs, params, tuple(douts),
                                          dtype=self.dtype, device=device)
                except (OracleUnavailable, Exception):
                    ratio = np.full(k, np.inf)  # evaluate says what is wrong
                else:
                    ratio = self._framework(oracle, ref_outs, ref_grads, o_outs, o_grads, size, input_max, dout_max,
                                            factors)
            for i in range(k):
                out[i][side] = float(ratio[i])
        return out

    def _factors(self, runs) -> np.ndarray | float:
        """The op's tolerance factor per value set (1 without an override)."""
        tol = self.spec.tolerance
        if tol is None:
            return 1.0
        if not callable(tol.rtol_factor):
            return max(float(tol.rtol_factor), 1.0)
        return np.array([max(float(tol.rtol_factor(Case(r[0], r[1]))), 1.0) for r in runs])

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

    def _numeric(self, runs, ref_grads, size, input_max, dout_max, factors, device):
        k = len(runs)
        directions = numeric.CORROBORATING_DIRECTIONS if self.frameworks else numeric.DIRECTIONS
        # a float64 cell's own forward is the numeric oracle's base point (evaluate.judge_side's `out0`)
        out0s = [r[2] if len(r[2]) > 1 else r[2][0] for r in runs] \
            if self.dtype == "float64" and self.target.numeric_inherits_forward else None
        try:
            res = numeric.vjp_projected_batch(self.target.oracle_forward("numeric"), [r[0] for r in runs], runs[0][1],
                                              [r[3] for r in runs], device=device, directions=directions,
                                              out0s=out0s, stacked=self.stacked)
        except Exception:
            return np.full(k, np.inf)
        noise = np.array([r.info["noise"] for r in res])
        rtol = self._rtol("numeric", size, False, factors)
        floor = floors(rtol, np.maximum(input_max, 1.0) * np.maximum(dout_max, 1e-30), noise)
        ratio = np.zeros(k)
        for n, g in ref_grads.items():
            dirs = res[0].grads[n].dirs.reshape(directions, -1)
            flat = g.reshape(k, -1)
            proj, scale = flat @ dirs.T, np.abs(flat) @ np.abs(dirs).T
            values = np.stack([r.grads[n].values for r in res])
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                allowed = np.asarray(rtol).reshape(-1, 1) * (np.abs(values) + scale) + floor.reshape(-1, 1)
                ratio = np.maximum(ratio, _worst(np.abs(proj - values) / allowed))
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


def _worst(r: np.ndarray) -> np.ndarray:
    """Largest entry per row; inf where a row has NaN (0/0 or a non-finite oracle value: not comfortable)."""
    worst = r.max(axis=1, initial=0.0)
    return np.where(np.isnan(worst), np.inf, worst)
