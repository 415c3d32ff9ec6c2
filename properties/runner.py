"""The search: Hypothesis drives each target x dtype x regime (a *group* of cells); every example is
checked against every requested (oracle, device) side at once; a failure is shrunk, triangulated and
saved; one record per cell (target x oracle x device x dtype x regime) is written as soon as its group
is done. The records' schema is reports.records; the saved case's, reports.cases.
"""
from __future__ import annotations

import functools
import shlex
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
from hypothesis import given
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis import target as hypothesis_target
from hypothesis.database import DirectoryBasedExampleDatabase

import oracles
from oracles.base import Projection, as_tuple
from reports.cases import SavedCase, write_case
from reports.records import cell_id, new_record

from .blame import triangulate
from .config import RunConfig, hypothesis_settings
from .devices import device_figures
from .evaluate import Evaluation, evaluate
from .spec import Case, OpSpec, to_jsonable
from .target import Target
from .verdict import Side, Verdict

__all__ = ["Disagreement", "GroupSearch", "example_database", "run_target_cells"]


class Disagreement(AssertionError):
    """Raised inside the Hypothesis test so that it shrinks the case."""


@functools.cache
def example_database(where: str):
    """Hypothesis's own example database: a directory, or Redis (shared by CI shards, so a failure
    found on one shard replays first on every shard)."""
    if where.startswith(("redis://", "rediss://", "unix://")):
        import redis
        from hypothesis.extra.redis import RedisExampleDatabase

        return RedisExampleDatabase(redis.Redis.from_url(where))
    return DirectoryBasedExampleDatabase(where)


def _set_database_key(test, key: str) -> None:
    # One example database key per group, so that a failure replays on the group that found it.
    # Hypothesis derives the key from the test function's source, the same for every group here;
    # this private attribute is how it lets a caller choose one (there is no public way).
    test._hypothesis_internal_database_key = key.encode()


@dataclass
class SideTally:
    examples: int = 0
    kinks: int = 0
    worst: Verdict | None = None  # the passing example nearest to failing
    worst_ev: Evaluation | None = None
    kink_reason: str | None = None
    skip: str | None = None


class GroupSearch:
    """One target x dtype x regime over every side: the search's state, and the records it ends with."""

    def __init__(self, spec: OpSpec | None, target: Target, dtype: str, regime: str, cfg: RunConfig,
                 family: str = "", source: str = ""):
        self.spec, self.target, self.dtype, self.regime, self.cfg = spec, target, dtype, regime, cfg
        self.family, self.source = (spec.family, spec.source) if spec else (family, source)
        self.sides = cfg.sides()
        self.tallies = {s: SideTally() for s in self.sides}
        # sides that cannot run here are skipped before the search, with the framework's reason
        for s in self.sides:
            try:
                oracles.get(s[0]).check_available(s[1])
            except oracles.OracleUnavailable as e:
                self.tallies[s].skip = str(e)
        self.live = [s for s in self.sides if self.tallies[s].skip is None]
        self.first_fail: Evaluation | None = None
        self.last_fail: Evaluation | None = None
        self.broken: str | None = None  # the search itself failed

    def check(self, case: Case, dout_seed: int) -> None:
        """One example (the body of the Hypothesis test)."""
        ev = evaluate(self.spec, self.target, case, self.dtype, self.live, dout_seed=dout_seed)
        if self.first_fail is None:
            for s in self.live:
                t, v = self.tallies[s], ev.sides[s]
                t.examples += 1
                if v.status == "kink":
                    t.kinks += 1
                    t.kink_reason = v.message
                elif v.status == "pass" and v.cmp is not None and (t.worst is None or v.cmp.ratio > t.worst.cmp.ratio):
                    t.worst, t.worst_ev = v, ev
        if ev.failed:
            self.last_fail = ev
            if self.first_fail is None:
                self.first_fail = ev
            raise Disagreement(ev.error or "; ".join(v.message for v in ev.sides.values()
                                                     if v.status in ("fail", "error")))
        ratio = ev.worst_ratio
        if np.isfinite(ratio):
            hypothesis_target(float(ratio), label="error / tolerance")

    def run(self, cases) -> None:
        if not self.live:
            return
        cfg = self.cfg
        # the ci profile is derandomized: no database, so that no state leaks between runs
        db = example_database(cfg.database) if cfg.database is not None and cfg.profile != "ci" else None
        test = given(case=cases, dout_seed=st.integers(0, 2**16))(self.check)
        if cfg.seed is not None and cfg.seed_drawn:
            # a seed the run drew for itself (no --seed): Hypothesis's @seed turns the example database
            # off, so the settings, database included, go on after it — saved failures still replay first
            test = hypothesis_settings(cfg, db)(hypothesis_seed(cfg.seed)(test))
        else:
            test = hypothesis_settings(cfg, db)(test)
            if cfg.seed is not None:
                test = hypothesis_seed(cfg.seed)(test)
        _set_database_key(test, f"gradaudit/{self.target.name}/{self.regime}/{self.dtype}")
        try:
            test()
        except Disagreement:
            pass
        except Exception as e:  # a strategy bug, or Hypothesis giving up: an error, not a crash
            if self.last_fail is None:
                self.broken = f"the search itself failed: {type(e).__name__}: {e}"

    # ---- the records ---------------------------------------------------------------------------

    def base(self, side: Side) -> dict:
        oracle, device = side
        t = self.target
        return new_record(target=t.name, op=t.op, oracle=oracle, device=device, dtype=self.dtype, regime=self.regime,
                          id=cell_id(target=t.name, op=t.op, oracle=oracle, device=device, dtype=self.dtype,
                                     regime=self.regime),
                          family=self.family, source=self.source, device_name=_device_name(oracle, device),
                          flags=_flags(oracle))

    def records(self) -> list[tuple[dict, SavedCase | None]]:
        """Every cell's record, with the case to save before it (failing cells)."""
        skips = [(dict(self.base(s), status="skip", examples=0, message=self.tallies[s].skip), None)
                 for s in self.sides if self.tallies[s].skip is not None]
        if self.broken is not None:
            return [(dict(self.base(s), status="error", examples=self.tallies[s].examples, message=self.broken), None)
                    for s in self.live] + skips
        final = self.last_fail
        if final is not None:
            triangulate(self.spec, self.target, final)
        out = skips
        for s in self.live:
            t = self.tallies[s]
            rec, saved = self.base(s), None
            rec["examples"] = t.examples
            v = final.sides.get(s) if final is not None else None
            if v is not None and v.status in ("fail", "error"):
                rec.update(_verdict_fields(v, final))
                saved = _saved_case(final, s, v)
                rec.update(replay=f"gradaudit replay {shlex.quote(rec['id'])}")  # a user's name may hold anything
            elif t.kinks:
                rec.update(status="kink", kink=t.kink_reason,
                           message=f"{t.kinks} of {t.examples} examples on a kink: {t.kink_reason}")
                if t.worst is not None:
                    rec.update(_figures(t.worst, t.worst_ev))
            else:
                rec.update(status="pass", message=f"{t.examples} examples agree")
                if t.worst is not None:
                    rec.update(_figures(t.worst, t.worst_ev))
                    rec["worst_target"] = _finite(t.worst.cmp.ratio)
                    rec["message"] += f"; worst error {t.worst.cmp.ratio:.2g} of the tolerance ({t.worst.phase})"
            if s[1] != "cpu":  # the CPU-vs-GPU differential and run-to-run spread, on the case shown
                shown = final if v is not None and v.status in ("fail", "error") else t.worst_ev
                if shown is not None:
                    rec.update(device_figures(self.target, shown, s, self.spec.tolerance if self.spec else None))
            out.append((rec, saved))
        return out


def _device_name(oracle, device):
    try:
        return oracles.get(oracle).device_name(device)
    except Exception:
        return device


def _flags(oracle):
    try:
        return oracles.get(oracle).flags()
    except Exception:
        return {}


def _finite(x):
    return None if x is None or not np.isfinite(x) else float(x)


def _figures(v: Verdict, ev: Evaluation) -> dict:
    c = v.cmp
    out = {"phase": v.phase, "shapes": ev.case.shapes(), "params": to_jsonable(ev.case.scalar_params()),
           "tolerance_source": v.tolerance_source, "tolerance_mode": v.tolerance_mode}
    if c is not None:
        out.update(max_abs_err=_finite(c.max_abs), max_rel_err=_finite(c.max_rel), max_ulp=_finite(c.max_ulp),
                   worst_index=list(c.worst_index) if c.worst_index is not None else None,
                   atol=c.atol, rtol=c.rtol, needed_atol=_finite(c.needed_atol), needed_rtol=_finite(c.needed_rtol))
    return out


def _verdict_fields(v: Verdict, ev: Evaluation) -> dict:
    out = _figures(v, ev)
    out.update(status=v.status, kind=v.kind, pattern=v.pattern, explanation=v.explanation, message=v.message,
               mutated=list(ev.mutated),
               blame=v.blame, triangulation=v.triangulation)
    return out


def _saved_case(ev: Evaluation, side: Side, v: Verdict) -> SavedCase:
    """The minimal counterexample: the inputs, both sides' results, and what the judge decided."""
    case = SavedCase(inputs=dict(ev.arrays), douts=list(ev.douts), ref=dict(ev.grads),
                     params={k: a for k, a in ev.case.params.items() if isinstance(a, np.ndarray)})
    if ev.out is not None:
        case.ref.update(zip(_outputs(ev.out), as_tuple(ev.out)))
    if v.result is not None:
        for n, g in v.result.grads.items():
            if isinstance(g, Projection):
                case.oracle[n], case.dirs[n] = g.values, g.dirs
            else:
                case.oracle[n] = g
        if v.result.out is not None:
            case.oracle.update(zip(_outputs(v.result.out), as_tuple(v.result.out)))
    case.allowed = {n: c.allowed for n, c in v.judged.items()}
    case.meta = {"oracle": side[0], "device": side[1], "dtype": ev.dtype,
                 "params": to_jsonable(ev.case.scalar_params()), "arrays": list(ev.arrays),
                 "array_params": list(case.params),
                 "judged": {n: {"ok": bool(c.ok), "ratio": _finite(c.ratio), "directional": c.directional,
                                "worst_index": list(c.worst_index) if c.worst_index is not None else None}
                            for n, c in v.judged.items()},
                 "verdict": {"status": v.status, "kind": v.kind, "phase": v.phase, "pattern": v.pattern,
                             "factor": v.factor, "why": list(v.why),
                             "explanation": v.explanation}}
    return case


def _outputs(out) -> list[str]:
    return ["out" if i == 0 else f"out{i}" for i in range(len(as_tuple(out)))]


def run_target_cells(spec: OpSpec | None, target: Target, inputs: Callable[[str, str], object],
                     regimes: Iterable[str], cfg: RunConfig, sink, *, done: Iterable[str] = (), family: str = "",
                     source: str = "", case_meta: dict | None = None) -> list[dict]:
    """Search every dtype x regime of `target` (`inputs(regime, breadth)` draws its cases) over every
    side of `cfg`; write each record to `sink` (a failing cell's case first) and return them all.
    Groups whose cells are all in `done` (ids of cells already recorded: a resumed run) are skipped."""
    done = set(done)
    out = []
    for dtype in cfg.dtypes:
        for regime in regimes:
            ids = {cell_id(target=target.name, op=target.op, oracle=o, device=d, dtype=dtype, regime=regime)
                   for o, d in cfg.sides()}
            if ids <= done:
                continue
            t0 = time.perf_counter()
            search = GroupSearch(spec, target, dtype, regime, cfg, family, source)
            search.run(inputs(regime, cfg.breadth))
            written = search.records()
            seconds = round((time.perf_counter() - t0) / max(len(written), 1), 4)
            for rec, saved in written:
                rec["seconds"] = seconds
                if saved is not None:
                    saved.meta.update(case_meta or {}, op=target.op, target=target.name, regime=regime, id=rec["id"])
                    rec["counterexample"] = write_case(cfg.report_dir, rec["id"], saved)
                sink.write(rec)  # after its case: a record never points at a missing file
                out.append(rec)
    return out
