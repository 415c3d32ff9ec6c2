"""One case, all sides: the target's forward and backward against each oracle, and why they differ.

This is the unit the runner drives with Hypothesis and that `gradaudit replay` re-runs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import oracles
from oracles import numeric
from oracles.base import OracleResult, OracleUnavailable, Projection, as_tuple

from . import patterns, tolerances
from .compare import Comparison, compare, compare_projection
from .spec import Case, OpSpec
from .target import Target

Side = tuple[str, str]  # (oracle, device)


@dataclass
class SideVerdict:
    status: str  # pass | fail | error | skip | kink
    kind: str | None = None  # on fail: gradient | forward | nonfinite | mutation
    phase: str | None = None  # forward | grad[<name>]
    cmp: Comparison | None = None
    message: str = ""
    result: OracleResult | None = None
    kink: str | None = None
    pattern: str | None = None
    tolerance_source: str = ""
    blame: str | None = None  # set by triangulation on a fail
    triangulation: dict | None = None


@dataclass
class Evaluation:
    case: Case
    dtype: str
    arrays: dict[str, np.ndarray]  # the cast inputs every side received
    douts: tuple[np.ndarray, ...] = ()
    out: Any = None
    grads: dict[str, np.ndarray] = field(default_factory=dict)
    mutated: list[str] = field(default_factory=list)
    error: str | None = None  # the target raised or returned something malformed
    sides: dict[Side, SideVerdict] = field(default_factory=dict)
    # per-case figures the tolerance policy needs, computed once instead of once per side and phase
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def failed(self) -> bool:
        return self.error is not None or any(v.status in ("fail", "error") for v in self.sides.values())

    @property
    def worst_ratio(self) -> float:
        r = [v.cmp.ratio for v in self.sides.values() if v.cmp is not None and np.isfinite(v.cmp.ratio)]
        return max(r, default=0.0)


def _describe(a) -> str:
    return f"{np.asarray(a).dtype}{list(np.shape(a))}"


def _dout_max(douts) -> float:
    return max((float(np.abs(d).max(initial=0.0)) for d in douts), default=1.0)


def _input_max(arrays) -> float:
    return max((float(np.abs(a).max(initial=0.0)) for a in arrays.values() if np.isfinite(a).all()), default=1.0)


def _size(arrays) -> int:
    return max((a.size for a in arrays.values()), default=1)


def _policy(ev: "Evaluation", oracle: str, *, forward: bool = False, override=None, noise: float = 0.0):
    """tolerances.policy for this case, memoised per evaluation: the inputs' and dout's magnitudes
    and an op's per-case condition factor do not change between sides."""
    key = (oracle, forward, id(override), noise)
    pol = ev._memo.get(key)
    if pol is None:
        if "stats" not in ev._memo:
            ev._memo["stats"] = (_size(ev.arrays), _input_max(ev.arrays), _dout_max(ev.douts))
        size, input_max, dout_max = ev._memo["stats"]
        if override is not None and callable(override.rtol_factor):  # a per-case factor: evaluate it once
            fixed = ev._memo.get(("override", id(override)))
            if fixed is None:
                fixed = ev._memo[("override", id(override))] = dataclasses.replace(
                    override, rtol_factor=float(override.rtol_factor(ev.case)))
            override = fixed
        kw = {} if forward else {"dout_max": dout_max, "noise": noise}
        pol = ev._memo[key] = tolerances.policy(ev.dtype, size=size, oracle=oracle, forward=forward,
                                                input_max=input_max, override=override, case=ev.case, **kw)
    return pol


def run_target(target: Target, case: Case, dtype: str, douts=None, dout_seed: int = 0) -> Evaluation:
    """Forward and backward of the code under test on private copies, validated."""
    from .strategies import upstream

    arrays = case.cast(dtype)
    # float array params (an mse target, a dropout mask) in the cell's dtype too, so that every side,
    # the float64 finite differences included, evaluates the same point
    case = Case(case.arrays, {k: v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
                              for k, v in case.params.items()})
    ev = Evaluation(case=case, dtype=dtype, arrays=arrays)
    names = list(arrays)
    mine = {n: a.copy() for n, a in arrays.items()}
    my_params = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in case.params.items()}
    try:
        out, cache = target.forward(*mine.values(), **my_params)
    except Exception as e:
        ev.error = f"{target.name}: forward raised {type(e).__name__}: {e}"
        return ev
    outs = as_tuple(out)
    if any(o is None for o in outs):
        ev.error = f"{target.name}: forward returned None"
        return ev
    ev.out = out
    if douts is None:
        douts = upstream([np.shape(o) for o in outs], dout_seed)
    ev.douts = tuple(np.asarray(d, dtype=dtype) for d in douts)
    my_douts = [d.copy() for d in ev.douts]
    try:
        grads = target.backward(*my_douts, cache)
    except Exception as e:
        ev.error = f"{target.name}: backward raised {type(e).__name__}: {e}"
        return ev
    want = ", ".join(f"d{n}" for n in names)
    if len(names) == 1 and not isinstance(grads, (tuple, list)):
        grads = (grads,)
    if not isinstance(grads, (tuple, list)) or len(grads) != len(names):
        got = f"{len(grads)} values" if isinstance(grads, (tuple, list)) else type(grads).__name__
        ev.error = f"{target.name}: returned {got}, expected {len(names)} gradients ({want})"
        return ev
    for n, g in zip(names, grads):
        if g is None or not hasattr(g, "shape"):
            ev.error = f"{target.name}: grad[{n}] is {type(g).__name__}, expected an array of shape {list(arrays[n].shape)}"
            return ev
        if tuple(g.shape) != arrays[n].shape:
            ev.error = f"{target.name}: grad[{n}] has shape {list(g.shape)}, expected {list(arrays[n].shape)}"
            return ev
        if np.asarray(g).dtype != np.dtype(dtype):
            ev.error = f"{target.name}: grad[{n}] has dtype {np.asarray(g).dtype}, expected {dtype}"
            return ev
    ev.grads = {n: np.asarray(g) for n, g in zip(names, grads)}
    ev.mutated = [n for n in names if not np.array_equal(mine[n], arrays[n], equal_nan=True)]
    ev.mutated += [f"dout{i}" if len(ev.douts) > 1 else "dout"
                   for i, (d, m) in enumerate(zip(ev.douts, my_douts)) if not np.array_equal(d, m, equal_nan=True)]
    ev.mutated += [k for k, v in case.params.items()
                   if isinstance(v, np.ndarray) and not np.array_equal(v, my_params[k])]
    return ev


def _compare_any(a, b, pol, dtype) -> Comparison:
    """a is a full array; b an array or a Projection."""
    if isinstance(b, Projection):
        return compare_projection(a, b.dirs, b.values, pol, ulp_dtype=dtype)
    return compare(a, b, pol, ulp_dtype=dtype)


def numeric_directions(ev: Evaluation) -> int:
    """The numeric oracle's random directions per array for this case: one (gradcheck fast_mode's
    check) where a framework oracle has already matched every gradient element by element, the full
    DIRECTIONS where finite differences decide alone or against a framework that disagrees."""
    frameworks = [v.status for (o, _), v in ev.sides.items() if o != "numeric"]
    corroborated = "pass" in frameworks and not ({"fail", "kink", "error"} & set(frameworks))
    return numeric.CORROBORATING_DIRECTIONS if corroborated else numeric.DIRECTIONS


def judge_side(spec: OpSpec | None, target: Target, ev: Evaluation, oracle: str, device: str) -> SideVerdict:
    try:
        extra = {}
        if oracle == "numeric":
            extra["directions"] = numeric_directions(ev)
            if ev.dtype == "float64":  # the target's own forward ran at exactly the numeric oracle's point
                extra["out0"] = ev.out
        res = oracles.get(oracle).vjp(target, ev.arrays, ev.case.params, ev.douts, dtype=ev.dtype, device=device,
                                      **extra)
    except OracleUnavailable as e:
        return SideVerdict("skip", message=str(e))
    except Exception as e:
        return SideVerdict("error", message=f"oracle {oracle} ({device}) raised {type(e).__name__}: {e}")
    override = spec.tolerance if spec is not None else None
    label = f"{target.name} vs {oracle} ({device}, {ev.dtype})"
    # forward first: when the forwards already disagree the gradients cannot be compared meaningfully
    if res.out is not None:
        mine, theirs = as_tuple(ev.out), as_tuple(res.out)
        pol = _policy(ev, oracle, forward=True, override=override)
        if len(mine) != len(theirs) or any(np.shape(m) != np.shape(t) for m, t in zip(mine, theirs)):
            return SideVerdict("fail", kind="forward", phase="forward", result=res, tolerance_source=pol.source,
                               message=f"{label}, forward: output {[_describe(m) for m in mine]}, "
                                       f"expected {[_describe(t) for t in theirs]}")
        for m, t in zip(mine, theirs):
            c = compare(m, t, pol, ulp_dtype=ev.dtype)
            if not c.ok:
                return SideVerdict("fail", kind="nonfinite" if c.nonfinite_mismatch else "forward", phase="forward",
                                   cmp=c, result=res, tolerance_source=pol.source,
                                   message=f"{label}, forward: {_difference(c)}")
    pol = _policy(ev, oracle, override=override, noise=res.info.get("noise", 0.0))
    worst_name, worst = None, None
    for n, g in ev.grads.items():
        c = _compare_any(g, res.grads[n], pol, ev.dtype)
        if worst is None or (c.nonfinite_mismatch, c.ratio) > (worst.nonfinite_mismatch, worst.ratio):
            worst_name, worst = n, c
    v = SideVerdict("pass", phase=f"grad[{worst_name}]" if worst_name else None, cmp=worst, result=res,
                    tolerance_source=pol.source)
    if worst is not None and not worst.ok:
        v.status = "fail"
        v.kind = "nonfinite" if worst.nonfinite_mismatch else "gradient"
        v.message = f"{label}, grad[{worst_name}]: {_difference(worst)}"
        theirs = res.grads[worst_name]
        if not isinstance(theirs, Projection):
            seq_axis = 1 if ev.grads[worst_name].ndim == 3 else None
            found = patterns.recognise(ev.grads[worst_name], theirs, name=f"grad[{worst_name}]", seq_axis=seq_axis)
            if found:
                v.pattern, why = found
                v.message += f" — {why}"
    return v


def flag_mutation(target: Target, ev: Evaluation) -> None:
    """A backward that writes into its inputs or dout corrupts every other consumer of them."""
    if not ev.mutated:
        return
    for (oracle, device), v in ev.sides.items():
        if v.status in ("pass", "kink"):
            v.status, v.kind, v.kink, v.pattern = "fail", "mutation", None, None  # values were not the problem
            v.message = (f"{target.name} vs {oracle} ({device}, {ev.dtype}): modified its input(s) in place: "
                         f"{', '.join(ev.mutated)}")


def _difference(c: Comparison) -> str:
    if c.nonfinite_mismatch:
        return f"NaN/Inf on one side only, first at index {c.worst_index}"
    return (f"greatest absolute difference {c.max_abs:.3g} at index {c.worst_index} "
            f"(up to {c.atol:.3g} + {c.rtol:.3g}*|expected| allowed; greatest relative difference {c.max_rel:.3g})")


def classify_kinks(spec: OpSpec | None, target: Target, ev: Evaluation) -> None:
    """Turn gradient fails on non-differentiable inputs into `kink` when the target's choice is a
    valid subgradient, and into `credit_at_ties` fails when it is not."""
    if spec is None or spec.kinks is None:
        return
    fails = {s: v for s, v in ev.sides.items()
             if v.status == "fail" and v.kind == "gradient" and v.pattern != "credit_at_ties"}
    if not fails:
        return
    validity = None
    for (oracle, _), v in fails.items():
        scale = max(max(float(np.abs(a).max(initial=0.0)) for a in ev.arrays.values()), 1.0)
        # the numeric oracle's central differences straddle any kink closer than its step
        tol = numeric.STEP * scale * 2 if oracle == "numeric" else 0.0
        reason = spec.kinks(Case(ev.arrays, ev.case.params), tol)
        if not reason:
            continue
        if validity is None:
            validity = (spec.subgradient(Case(ev.arrays, ev.case.params), ev.douts, ev.grads)
                        if spec.subgradient else (True, "no subgradient test for this op"))
        ok, why = validity
        if ok:
            v.status, v.kind, v.kink = "kink", None, reason
            v.message = f"{reason}: {why}"
        else:
            v.pattern = "credit_at_ties"
            v.message += f" — input on a kink ({reason}) and {why}"


def evaluate(spec: OpSpec | None, target: Target, case: Case, dtype: str, sides: list[Side],
             douts=None, dout_seed: int = 0) -> Evaluation:
    ev = run_target(target, case, dtype, douts=douts, dout_seed=dout_seed)
    if ev.error is not None:
        for s in sides:
            ev.sides[s] = SideVerdict("error", message=ev.error)
        return ev
    # the frameworks first: how many directions finite differences take depends on their verdicts
    for oracle, device in sorted(sides, key=lambda s: s[0] == "numeric"):
        ev.sides[(oracle, device)] = judge_side(spec, target, ev, oracle, device)
    classify_kinks(spec, target, ev)
    flag_mutation(target, ev)
    return ev


def oracles_agree(a: OracleResult, b: OracleResult, names, ev: Evaluation, oracle_a: str, oracle_b: str,
                  override=None) -> bool:
    """Do two oracles agree with each other on this case (gradients, and forwards where both have one)?"""
    looser = "numeric" if "numeric" in (oracle_a, oracle_b) else oracle_a
    pol = _policy(ev, looser, override=override)
    for n in names:
        ga, gb = a.grads[n], b.grads[n]
        if isinstance(ga, Projection) and isinstance(gb, Projection):
            continue
        if isinstance(ga, Projection):
            ga, gb = gb, ga
        if not _compare_any(ga, gb, pol, ev.dtype).ok:
            return False
    return True
