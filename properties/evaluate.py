"""One case, all sides: the target's forward and backward against each oracle, and why they differ.

This is the unit the runner drives with Hypothesis and that `gradaudit replay` re-runs. Its answer
is a `Verdict` per side (properties.verdict): fields, put into words by `describe`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

import oracles
from oracles import numeric
from oracles.base import OracleUnavailable, Projection, as_tuple

from . import patterns, tolerances
from .compare import Comparison, compare, compare_projection
from .execute import Evaluation, failure_class, run_target
from .spec import Case, OpSpec
from .target import Target
from .verdict import Side, Verdict, name_pattern, raised

__all__ = ["Evaluation", "classify_kinks", "compare_any", "evaluate", "failure_class", "judge_side",
           "numeric_directions", "policy_for", "run_target"]


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


REFINED_STEP = 0.1  # finite differences again with steps this much smaller: truncation error 100x less
REFINED = f"finite differences at {REFINED_STEP:g}x the step agree: at the default step the forward curves too sharply"


def judge_side(spec: OpSpec | None, target: Target, ev: Evaluation, oracle: str, device: str) -> Verdict:
    """One side of one case: the forwards first (a wrong forward is its own finding, on the forward
    function, whatever the backward did), then the backward's gradients.

    Finite differences that alone disagree with a backward that a framework has just matched on the
    same case are taken again with a tenth of the step: where the forward curves sharply within one
    step (x/|x| at a small |x|), the truncation error of central differences (step squared times the
    third derivative) exceeds the tolerance, and a correct backward must not be red for the oracle's
    error. A wrong backward stays wrong at any step, and the judge computes both quotients itself from
    the forward's values: nothing forged in an audit child's frameworks passes this way."""
    v = _judge_side(spec, target, ev, oracle, device)
    if oracle == "numeric" and v.status == "fail" and v.kind == "gradient" and \
            target.oracle_vjp(oracle) is numeric.vjp and \
            any(o != "numeric" and w.status == "pass" for (o, _), w in ev.sides.items()):
        refined = _judge_side(spec, target, ev, oracle, device, step_scale=REFINED_STEP)
        if refined.status == "pass":
            refined.notes.append(REFINED)
            return refined
    return v


def _judge_side(spec: OpSpec | None, target: Target, ev: Evaluation, oracle: str, device: str,
                step_scale: float = 1.0) -> Verdict:
    v = Verdict("pass", what=target.name, side=(oracle, device), dtype=ev.dtype, forward_name=target.forward_name)
    if ev.shape_mismatch is not None:  # the target's own error: no oracle needed to see it
        return dataclasses.replace(v, status="fail", kind="forward", phase="forward", out_shapes=ev.shape_mismatch)
    if ev.backward_error is not None and oracle == "numeric" and not (
            ev.dtype == "float64" and target.numeric_inherits_forward):
        # finite differences have no forward of their own to compare here; the backward's error stands
        return _backward_error(v, ev)
    try:
        extra = {}
        if oracle == "numeric":
            extra["directions"] = numeric_directions(ev)
            if step_scale != 1.0:
                extra["step_scale"] = step_scale
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
                if ev.backward_error is not None:
                    v.notes.append(f"the backward failed too: {ev.backward_error}")
                return v
    if ev.backward_error is not None:
        return _backward_error(v, ev)
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


def _backward_error(v: Verdict, ev: Evaluation) -> Verdict:
    v = dataclasses.replace(v, status="error", fault=ev.backward_error)
    name_pattern(v, ev.finding)
    return v


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
             douts=None, dout_seed: int = 0, stream: int | None = None, forward_only: bool = False) -> Evaluation:
    """The target on `case` under the global random `stream`, judged against every side in `sides`
    (`forward_only`: the forwards alone; the target's backward is not called)."""
    # the frameworks first: how many directions finite differences take depends on their verdicts
    order = sorted(sides, key=lambda s: s[0] == "numeric")
    tolerance = spec.tolerance if spec is not None else None
    if tolerance is not None and callable(tolerance.rtol_factor) and getattr(target, "oracles_beside_user_code", False):
        # a per-case factor that probes the forward (a derivation's centring, memoised per shape) does it
        # before the target's calls, not between the oracles: the audit child runs those ahead in a row
        # (gradaudit/_ahead.py) that a call in between would break
        try:
            tolerance.rtol_factor(case)
        except Exception:  # noqa: BLE001  raised again where the policy needs it, as before
            pass
    ev = run_target(target, case, dtype, douts=douts, dout_seed=dout_seed, spec=spec, stream=stream,
                    forward_only=forward_only, sides=tuple(order))
    if ev.error is not None:
        for s in sides:
            ev.sides[s] = Verdict("error", what=target.name, side=s, dtype=dtype, fault=ev.error)
            name_pattern(ev.sides[s], ev.finding)
        return ev
    for oracle, device in order:
        ev.sides[(oracle, device)] = judge_side(spec, target, ev, oracle, device)
    classify_kinks(spec, target, ev)
    return ev
