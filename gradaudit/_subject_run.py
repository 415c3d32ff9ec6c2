"""Running a `gradaudit.function` subject: the cases of each check (drawn as a derivation's are, by
gradaudit/_draw.py), its cells through the runner's own search, shrinking, blame and records
(properties/runner.py), and what the records add: the run-to-run spread, the named cause of a contract
violation or of a double backward broken by `ctx` intermediates, skips with their reasons.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import strategies as st

import oracles
from oracles.base import OracleUnavailable, as_tuple
from properties import patterns
from properties.runner import run_target_cells
from properties.spec import Case, OpSpec, Tolerance
from properties.strategies import upstream
from reports.records import cell_id, new_record

from ._subject import SubjectState, adapter, subject_target
from .function import SECOND_ORDER, subjects_in

__all__ = ["check_inputs", "dout_names", "expanded", "run_cells", "run_subject", "subject_in"]


# ---- the cases of a check -----------------------------------------------------------------------

def expanded(case: Case) -> Case:
    """Each array constant along its first axis longer than 1: the values an expanded (stride 0)
    input of that shape holds."""
    out = {}
    for n, a in case.arrays.items():
        axis = next((i for i, s in enumerate(a.shape) if s > 1), None)
        out[n] = a if axis is None else np.broadcast_to(np.take(a, [0], axis=axis), a.shape).copy()
    return Case(out, case.params)


def dout_names(subject, n: int) -> list[str]:
    base = ["dout"] if n == 1 else [f"dout{i}" for i in range(n)]
    return [b if b not in subject.arrays else f"{b}_" for b in base]


def check_inputs(subject, ad, check: str):
    base = subject.inputs
    if check == "vjp_expanded":
        return lambda regime, breadth: base(regime, breadth).map(expanded)
    if check not in SECOND_ORDER:
        return base
    shapes_of = _output_shapes(subject, ad)

    def with_douts(regime, breadth):
        @st.composite
        def draw(draw_):
            case = draw_(base(regime, breadth))
            shapes = shapes_of(case)
            ds = upstream(shapes, draw_(st.integers(0, 2**16)))
            return Case({**case.arrays, **dict(zip(dout_names(subject, len(ds)), ds))}, case.params)

        return draw()

    return with_douts


def _output_shapes(subject, ad):
    """case -> the shapes of the subject's outputs (its forward run once per input shapes)."""
    seen = {}

    def shapes(case: Case):
        key = (tuple(a.shape for a in case.arrays.values()), repr(sorted(case.scalar_params().items())))
        if key not in seen:
            try:
                outs = as_tuple(ad.numpy_forward()(*case.arrays.values(), **case.params))
                seen[key] = [np.shape(o) for o in outs]
            except Exception:  # the forward raises here: the check's own call reports it
                seen[key] = [()]
        return seen[key]

    return shapes


# ---- the records --------------------------------------------------------------------------------

KEPT_NOTE = ("{name} keeps tensors for backward that are neither its inputs nor its outputs ({kept}): computed in "
             "forward without a graph, they are constants to the double backward (pytorch #76185); save the "
             "inputs and recompute them in backward, or return them as outputs")


class _Sink:
    """Between the runner and the caller's sink: the subject's own figures and named causes."""

    def __init__(self, inner, state: SubjectState, subject, check: str):
        self.inner, self.state, self.subject, self.check = inner, state, subject, check
        self.group, self.spread = None, None

    def write(self, rec: dict) -> None:
        group = (rec.get("dtype"), rec.get("regime"))
        if group != self.group:
            self.group, self.spread = group, self.state.take_spread()
        if self.check == "vjp":
            rec["target_spread"] = self.spread
        if rec.get("status") == "error" and rec.get("pattern") is None:
            rec["pattern"], rec["explanation"] = self.state.violations.get(rec.get("message"), (None, None))
        if (self.check == "vjp_of_vjp" and rec.get("status") == "fail" and rec.get("blame") == "reference"
                and self.state.kept):
            # the cause, where the judge saw its symptom (a zero or partial second derivative)
            rec["message"] = f"{rec['message']} — " + KEPT_NOTE.format(name=self.subject.name,
                                                                        kept=", ".join(self.state.kept))
            rec["pattern"] = "ctx_intermediate"
            rec["explanation"] = patterns.explain("ctx_intermediate", kept=", ".join(self.state.kept))
        self.inner.write(rec)


def _skips(subject, target_name: str, cfg, sides, dtypes, why: str, sink, done, family: str, source: str) -> list:
    out = []
    for dtype in dtypes:
        for regime in subject.regimes:
            for o, d in sides:
                cid = cell_id(target=target_name, op=subject.name, oracle=o, device=d, dtype=dtype, regime=regime)
                if cid in done:
                    continue
                rec = new_record(target=target_name, op=subject.name, oracle=o, device=d, dtype=dtype, regime=regime,
                                 status="skip", examples=0, message=why, id=cid, family=family, source=source,
                                 device_name=d, seconds=0.0)
                sink.write(rec)
                out.append(rec)
    return out


def _device_unavailable(subject, device: str) -> str | None:
    try:
        oracles.get(subject.framework).check_available(device)
    except OracleUnavailable as e:
        return f"{subject.name} on {device}: {e}"
    return None


def run_subject(subject, cfg, sink, *, done=(), case_meta: dict | None = None, family: str = "function",
                source: str = "") -> list[dict]:
    """Every check of `subject` on every device of `cfg`, in the subject's dtypes (default the run's);
    each record to `sink` as its cell finishes. Sides that cannot judge the subject (no reference
    forward, a primal autograd cannot differentiate, no GPU) are skip records with the reason."""
    done = set(done)
    dtypes = tuple(subject.dtypes or cfg.dtypes)
    src = source or subject.source or subject.name
    c = dataclasses.replace(cfg, dtypes=dtypes)
    records = []
    for device in c.devices:
        for check in subject.checks:
            state = SubjectState()
            target = subject_target(subject, check, device, state)
            why = _device_unavailable(subject, device) if device != "cpu" else None
            if why is not None:
                records += _skips(subject, target.name, c, c.sides(), dtypes, why, sink, done, family, src)
                continue
            gone = [(o, d) for o, d in c.sides() if o in target.unavailable]
            for o in sorted({o for o, _ in gone}):
                records += _skips(subject, target.name, c, [s for s in gone if s[0] == o], dtypes,
                                  target.unavailable[o], sink, done, family, src)
            live = tuple(o for o in c.oracles if o not in target.unavailable)
            if not live:
                continue
            inputs = check_inputs(subject, adapter(subject), check)
            spec = OpSpec(name=subject.name, family=family, source=src, inputs=inputs, regimes=tuple(subject.regimes),
                          tolerance=Tolerance(*subject.tolerance) if subject.tolerance else None)
            meta = {**(case_meta or {}), "function_check": check, "function_device": device}
            records += run_target_cells(spec, target, inputs, subject.regimes, dataclasses.replace(c, oracles=live),
                                        _Sink(sink, state, subject, check), done=done, family=family, source=src,
                                        case_meta=meta)
    return records



def run_cells(spec, target, inputs, regimes, cfg, sink, *, done=(), family: str = "", source: str = "",
              case_meta: dict | None = None) -> list[dict]:
    """properties.runner.run_target_cells, or, for a job of the "function" family, every check of the
    subject that `target` then is (its own spec, inputs and regimes: one target per check)."""
    if family == "function":
        return run_subject(target, cfg, sink, done=done, case_meta=case_meta, family=family, source=source)
    return run_target_cells(spec, target, inputs, regimes, cfg, sink, done=done, family=family, source=source,
                            case_meta=case_meta)


def subject_in(module, meta: dict):
    """The Target of the check a saved case of a subject in `module` records (gradaudit/replay.py)."""
    name = meta.get("audit_name")
    s = next((s for s in subjects_in(module) if s.name == name), None)
    if s is None:
        raise LookupError(f"no gradaudit.function subject {name!r} in {getattr(module, '__file__', module)}")
    return subject_target(s, meta["function_check"], meta.get("function_device", "cpu"))
