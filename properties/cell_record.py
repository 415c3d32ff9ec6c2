"""What a cell's record and its saved case hold of a verdict (properties/runner.py writes them): the
figures of the comparison, the verdict's fields, the minimal counterexample with both sides' results
and what the judge allowed."""
from __future__ import annotations

import numpy as np

import oracles
from oracles.base import Projection, as_tuple
from reports.cases import SavedCase

from .evaluate import Evaluation
from .spec import to_jsonable
from .verdict import Side, Verdict

__all__ = ["device_name", "figures", "finite_or_none", "oracle_flags", "output_names", "saved_case", "verdict_fields"]


def device_name(framework, device):
    """`framework`: an oracle module, or what stands for one (properties.target.Target.framework)."""
    try:
        return framework.device_name(device)
    except Exception:
        return device


def oracle_flags(framework):
    try:
        return framework.flags()
    except Exception:
        return {}


def finite_or_none(x):
    return None if x is None or not np.isfinite(x) else float(x)


def figures(v: Verdict, ev: Evaluation) -> dict:
    c = v.cmp
    out = {"phase": v.phase, "shapes": ev.case.shapes(), "params": to_jsonable(ev.case.scalar_params()),
           "tolerance_source": v.tolerance_source, "tolerance_mode": v.tolerance_mode}
    if c is not None:
        out.update(max_abs_err=finite_or_none(c.max_abs), max_rel_err=finite_or_none(c.max_rel), max_ulp=finite_or_none(c.max_ulp),
                   worst_index=list(c.worst_index) if c.worst_index is not None else None,
                   atol=c.atol, rtol=c.rtol, needed_atol=finite_or_none(c.needed_atol), needed_rtol=finite_or_none(c.needed_rtol))
    return out


def verdict_fields(v: Verdict, ev: Evaluation) -> dict:
    out = figures(v, ev)
    out.update(status=v.status, kind=v.kind, pattern=v.pattern, explanation=v.explanation, message=v.message,
               mutated=list(ev.mutated),
               blame=v.blame, triangulation=v.triangulation, severity=v.severity or "fail")
    return out


def saved_case(ev: Evaluation, side: Side, v: Verdict) -> SavedCase:
    """The minimal counterexample: the inputs, both sides' results, and what the judge decided."""
    case = SavedCase(inputs=dict(ev.arrays), douts=list(ev.douts), ref=dict(ev.grads),
                     params={k: a for k, a in ev.case.params.items() if isinstance(a, np.ndarray)})
    if ev.out is not None:
        case.ref.update(zip(output_names(ev.out), as_tuple(ev.out)))
    if v.result is not None:
        for n, g in v.result.grads.items():
            if isinstance(g, Projection):
                case.oracle[n], case.dirs[n] = g.values, g.dirs
            else:
                case.oracle[n] = g
        if v.result.out is not None:
            case.oracle.update(zip(output_names(v.result.out), as_tuple(v.result.out)))
    case.allowed = {n: c.allowed for n, c in v.judged.items()}
    case.meta = {"oracle": side[0], "device": side[1], "dtype": ev.dtype, "stream": ev.stream,
                 "params": to_jsonable(ev.case.scalar_params()), "arrays": list(ev.arrays),
                 "array_params": list(case.params),
                 "judged": {n: {"ok": bool(c.ok), "ratio": finite_or_none(c.ratio), "directional": c.directional,
                                "worst_index": list(c.worst_index) if c.worst_index is not None else None}
                            for n, c in v.judged.items()},
                 "verdict": {"status": v.status, "kind": v.kind, "phase": v.phase, "pattern": v.pattern,
                             "factor": v.factor, "why": list(v.why),
                             "explanation": v.explanation, "severity": v.severity}}
    return case


def output_names(out) -> list[str]:
    return ["out" if i == 0 else f"out{i}" for i in range(len(as_tuple(out)))]
