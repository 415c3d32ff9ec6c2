"""One case, all sides: the target's forward and backward against each oracle, and why they differ.

This is the unit the runner drives with Hypothesis and that `gradaudit replay` re-runs. Its answer
is a `Verdict` per side (properties.verdict): fields, put into words by `describe`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import oracles
from oracles import numeric
from oracles.base import OracleUnavailable, Projection, as_tuple

from . import patterns, tolerances
from .compare import Comparison, compare, compare_projection
from .spec import Case, OpSpec
from .strategies import upstream
from .target import Target
from .verdict import Side, Verdict, name_pattern, raised

__all__ = ["Evaluation", "classify_kinks", "compare_any", "evaluate", "flag_mutation", "judge_side",
           "numeric_directions", "policy_for", "run_target"]


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
    finding: patterns.Finding | None = None  # the error's pattern (a gradient of a telling shape)
    sides: dict[Side, Verdict] = field(default_factory=dict)
    # per-case figures the tolerance policy needs, computed once instead of once per side and phase
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def failed(self) -> bool:
        return self.error is not None or any(v.status in ("fail", "error") for v in self.sides.values())

    @property
    def worst_ratio(self) -> float:
        r = [v.cmp.ratio for v in self.sides.values() if v.cmp is not None and np.isfinite(v.cmp.ratio)]
        return max(r, default=0.0)


def _input_max(arrays) -> float:
    return max((float(np.abs(a).max(initial=0.0)) for a in arrays.values() if np.isfinite(a).all()), default=1.0)


def policy_for(ev: Evaluation, oracle: str, *, forward: bool = False, override=None, noise: float = 0.0):
    """tolerances.policy for this case, memoised per evaluation: the inputs' and dout's magnitudes
    and an op's per-case condition factor do not change between sides."""
    key = (oracle, forward, id(override), noise)
    pol = ev.memo.get(key)
    if pol is None:
        if "stats" not in ev.memo:
            ev.memo["stats"] = (max((a.size for a in ev.arrays.values()), default=1), _input_max(ev.arrays),
                                max((float(np.abs(d).max(initial=0.0)) for d in ev.douts), default=1.0))
        size, input_max, dout_max = ev.memo["stats"]
        if override is not None and callable(override.rtol_factor):  # a per-case factor: evaluate it once
            fixed = ev.memo.get(("override", id(override)))
            if fixed is None:
                fixed = ev.memo[("override", id(override))] = dataclasses.replace(
                    override, rtol_factor=float(override.rtol_factor(ev.case)))
            override = fixed
        kw = {} if forward else {"dout_max": dout_max, "noise": noise}
        pol = ev.memo[key] = tolerances.policy(ev.dtype, size=size, oracle=oracle, forward=forward,
                                               input_max=input_max, override=override, case=ev.case, **kw)
    return pol


def run_target(target: Target, case: Case, dtype: str, douts=None, dout_seed: int = 0) -> Evaluation:
    """Forward and backward of the code under test on private copies, validated."""
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
        ev.error = raised(f"{target.name}: forward", e, named_alone=True)
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
        ev.error = raised(f"{target.name}: backward", e, named_alone=True)
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
            ev.finding = patterns.recognise_shape(n, g.shape, arrays[n].shape, case.params)
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


def compare_any(a, b, pol, dtype) -> Comparison:
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


def _output_names(n: int) -> list[str]:
    return ["out" if i == 0 else f"out{i}" for i in range(n)]


def judge_side(spec: OpSpec | None, target: Target, ev: Evaluation, oracle: str, device: str) -> Verdict:
    v = Verdict("pass", what=target.name, side=(oracle, device), dtype=ev.dtype, forward_name=target.forward_name)
    try:
        extra = {}
        if oracle == "numeric":
            extra["directions"] = numeric_directions(ev)
            if ev.dtype == "float64" and target.numeric_inherits_forward:
                extra["out0"] = ev.out  # the target's own forward ran at exactly the numeric oracle's point
        res = target.oracle_vjp(oracle)(target.oracle_forward(oracle), ev.arrays, ev.case.params, ev.douts,
                                        dtype=ev.dtype, device=device, **extra)
    except OracleUnavailable as e:
        return dataclasses.replace(v, status="skip", fault=str(e))
    except Exception as e:
        return dataclasses.replace(v, status="error", fault=raised(f"oracle {oracle} ({device})", e))
    v.result = res
    override = spec.tolerance if spec is not None else None
    # forward first: when the forwards already disagree the gradients cannot be compared meaningfully
    if res.out is not None:
        mine, theirs = as_tuple(ev.out), as_tuple(res.out)
        pol = policy_for(ev, oracle, forward=True, override=override)
        v.tolerance_source, v.tolerance_mode = pol.source, pol.mode
        if len(mine) != len(theirs) or any(np.shape(m) != np.shape(t) for m, t in zip(mine, theirs)):
            return dataclasses.replace(v, status="fail", kind="forward", phase="forward", out_shapes=(mine, theirs))
        for name, m, t in zip(_output_names(len(mine)), mine, theirs):
            p = _own_error_policy(ev, res, name, pol, forward=True)
            c = v.judged[name] = compare(m, t, p, ulp_dtype=ev.dtype)
            if not c.ok:
                v.tolerance_source, v.tolerance_mode = p.source, p.mode
                v.status, v.kind, v.phase, v.cmp = "fail", "nonfinite" if c.nonfinite_mismatch else "forward", \
                    "forward", c
                if c.nonfinite_mismatch:
                    name_pattern(v, patterns.recognise_nonfinite(ev, m, t, what="the forward", op=target.op))
                return v
    pol = policy_for(ev, oracle, override=override, noise=res.info.get("noise", 0.0))
    v.tolerance_source, v.tolerance_mode = pol.source, pol.mode
    worst_name, worst = None, None
    for n, g in ev.grads.items():
        p = _own_error_policy(ev, res, n, pol, forward=False)
        c = v.judged[n] = compare_any(g, res.grads[n], p, ev.dtype)
        if worst is None or (c.nonfinite_mismatch, c.ratio) > (worst.nonfinite_mismatch, worst.ratio):
            worst_name, worst = n, c
            v.tolerance_source, v.tolerance_mode = p.source, p.mode
    v.phase, v.cmp = (f"grad[{worst_name}]" if worst_name else None), worst
    if worst is not None and not worst.ok:
        v.status = "fail"
        v.kind = "nonfinite" if worst.nonfinite_mismatch else "gradient"
        name_pattern(v, patterns.recognise_nonfinite(ev, ev.grads[worst_name], res.grads[worst_name],
                                                     what=v.phase, op=target.op)
                     if worst.nonfinite_mismatch and not isinstance(res.grads[worst_name], Projection)
                     else patterns.recognise_case(ev, worst_name, res.grads, op=target.op, allowed=worst.allowed))
    return v


def _own_error_policy(ev: Evaluation, res, name: str, pol, *, forward: bool):
    """An oracle that computed the same math in the cell's dtype as well as in float64 (a
    `gradaudit.function` subject's, at float16 or bfloat16) reports its own error there, per array:
    `info["reference_error"] = {"forward": {out name: err}, "grads": {array name: err}}`. Such an array
    is judged reference-relative (tolerances.reference_relative)."""
    own = (res.info.get("reference_error") or {}).get("forward" if forward else "grads") or {}
    if name not in own:
        return pol
    _, input_max, dout_max = ev.memo["stats"]  # policy_for's, computed before
    return tolerances.reference_relative(ev.dtype, own[name], input_max=input_max, dout_max=dout_max, forward=forward,
                                         noise=0.0 if forward else res.info.get("noise", 0.0))


def flag_mutation(target: Target, ev: Evaluation) -> None:
    """A backward that writes into its inputs or dout corrupts every other consumer of them."""
    if not ev.mutated:
        return
    for v in ev.sides.values():
        if v.status in ("pass", "kink"):  # the values were not the problem
            v.status, v.kind, v.kink, v.pattern, v.factor = "fail", "mutation", None, None, None
            v.why, v.notes, v.modified = [], [], list(ev.mutated)


def classify_kinks(spec: OpSpec | None, target: Target, ev: Evaluation) -> None:
    """Turn gradient fails on non-differentiable inputs into `kink` when the target's choice is a
    valid subgradient, and name them (`credit_at_ties`, `invalid_subgradient`) when it is not."""
    if spec is None or spec.kinks is None:
        return
    fails = {s: v for s, v in ev.sides.items() if v.status == "fail" and v.kind == "gradient" and v.kink is None}
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
        ok, why = validity[0], validity[1]
        v.kink = reason
        if ok:
            v.status, v.kind, v.why = "kink", None, [why]
        else:
            # an op's own test names the failure; an (ok, why) pair from a user's hook says no more than this
            named = getattr(validity, "pattern", "invalid_subgradient")
            if named is not None:
                v.pattern, v.factor = named, None
            v.why.append(f"input on a kink ({reason}) and {why}")


def evaluate(spec: OpSpec | None, target: Target, case: Case, dtype: str, sides: list[Side],
             douts=None, dout_seed: int = 0) -> Evaluation:
    ev = run_target(target, case, dtype, douts=douts, dout_seed=dout_seed)
    if ev.error is not None:
        for s in sides:
            ev.sides[s] = Verdict("error", what=target.name, side=s, dtype=dtype, fault=ev.error)
            name_pattern(ev.sides[s], ev.finding)
        return ev
    # the frameworks first: how many directions finite differences take depends on their verdicts
    for oracle, device in sorted(sides, key=lambda s: s[0] == "numeric"):
        ev.sides[(oracle, device)] = judge_side(spec, target, ev, oracle, device)
    classify_kinks(spec, target, ev)
    flag_mutation(target, ev)
    return ev
