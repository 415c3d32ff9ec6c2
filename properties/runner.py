"""The search: Hypothesis drives each target x dtype x regime (a *group* of cells); every example is
checked against every requested (oracle, device) side at once; a failure is shrunk, triangulated and
saved; one record per cell (target x oracle x device x dtype x regime) is written as soon as its group
is done. The records' schema is reports.records; the saved case's, reports.cases.
"""
from __future__ import annotations

import contextlib
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
from reports.cases import SavedCase, write_case
from reports.records import cell_id, new_record

from .blame import triangulate
from .cell_record import device_name, figures, finite_or_none, oracle_flags, saved_case, verdict_fields
from .config import PROFILES, RunConfig, hypothesis_settings, module_independent_draws
from .devices import device_figures
from .evaluate import Evaluation, evaluate, failure_class
from .spec import Case, OpSpec
from .stability import settle_severity
from .target import Target
from .verdict import Hazard, Side, Verdict

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
    final: Evaluation | None = None  # the shrunk failing example, once this side has failed
    examples_final: int = 0  # the examples of the round that found it
    complete: bool = False  # a whole search ran for this side (its budget, or every case there is)
    exhausted: bool = False  # ... and it ended because the strategy had no further case to draw
    broken: str | None = None  # the search of this side's round failed


class GroupSearch:
    """One target x dtype x regime over every side: the search's state, and the records it ends with.

    Every side searches its whole example budget. A search runs over the sides still open; when it
    finds a failure it shrinks it (towards a smaller case of the same failure: a wrong forward never
    slips into a backward fail of a smaller case, see `Evaluation.failures`), and the sides failing on
    the shrunk case are settled with it. The sides that have not failed search again, from the start,
    with their whole budget: one side's failure never ends another's search."""

    def __init__(self, spec: OpSpec | None, target: Target, dtype: str, regime: str, cfg: RunConfig,
                 family: str = "", source: str = ""):
        self.spec, self.target, self.dtype, self.regime, self.cfg = spec, target, dtype, regime, cfg
        self.family, self.source = (spec.family, spec.source) if spec else (family, source)
        self.sides = cfg.sides()
        self.tallies = {s: SideTally() for s in self.sides}
        # sides that cannot run here are skipped before the search, with the framework's reason
        for s in self.sides:
            try:
                target.framework(s[0]).check_available(s[1])
            except oracles.OracleUnavailable as e:
                self.tallies[s].skip = str(e)
        self.live = [s for s in self.sides if self.tallies[s].skip is None]
        self.hazards: dict[str, Hazard] = {}  # what the target did with correct values, by message
        self.mutated: dict[str, None] = {}  # the arrays it wrote into, in the order first seen
        self._round: list[Side] = []  # the sides the current search judges
        self._wanted: frozenset = frozenset()  # the (side, failure class) pairs the current search looks for
        self._forward_only = False  # the current search judges the forwards alone
        self._failure: frozenset | None = None  # what the current search's first failure was
        self.last_fail: Evaluation | None = None

    def check(self, case: Case, dout_seed: int) -> None:
        """One example (the body of the Hypothesis test). The global random stream the target runs under
        follows the upstream gradient's seed: a strategy of its own would change every case a
        derandomized (ci) search draws."""
        stream = dout_seed * 2654435761 % 2**32
        ev = evaluate(self.spec, self.target, case, self.dtype, self._round, dout_seed=dout_seed, stream=stream,
                      forward_only=self._forward_only)
        for h in ev.hazards:
            self.hazards.setdefault(h.message, h)
        self.mutated.update(dict.fromkeys(ev.mutated))
        failures = ev.failures() & self._wanted
        if self._failure is None:
            for s in self._round:
                t, v = self.tallies[s], ev.sides[s]
                t.examples += 1
                if v.status == "kink":
                    t.kinks += 1
                    t.kink_reason = v.message
                elif v.status == "pass" and v.cmp is not None and (t.worst is None or v.cmp.ratio > t.worst.cmp.ratio):
                    t.worst, t.worst_ev = v, ev
            if failures:
                self._failure = failures
        # while shrinking, only a smaller case of the same failure counts (Hypothesis, reporting one bug,
        # would otherwise slip to any other failure of a smaller case)
        if failures and failures & self._failure:
            self.last_fail = ev
            raise Disagreement("; ".join(v.message for v in ev.sides.values() if v.status in ("fail", "error")))
        ratio = ev.worst_ratio
        if np.isfinite(ratio):
            hypothesis_target(float(ratio), label="error / tolerance")

    def run(self, cases) -> None:
        """Search until every side has searched its whole budget or failed. A side whose backward failed
        (or raised) searches on for a wrong forward, which is the finding to report first: judged on the
        forwards alone, where the target's forward is its own (not the one the oracles differentiate)."""
        pending = {s: FORWARD | BACKWARD for s in self.live}  # what each side still searches for
        own_forward = self.target.xp_forward is None
        for attempt in range(2 * len(self.live) + 1):  # each round settles something, or ends the search
            if not pending:
                break
            self._forward_only = all(w == FORWARD for w in pending.values())
            self._round = list(pending)
            self._wanted = frozenset((s, c) for s, w in pending.items() for c in w)
            counts = {s: self.tallies[s] for s in pending}
            for s in pending:  # a fresh budget: an earlier round's count stops at its failure
                self.tallies[s] = SideTally(final=counts[s].final, examples_final=counts[s].examples_final)
            self._failure, self.last_fail = None, None
            stopped, error = self._search(cases, attempt)
            final = self.last_fail
            if error is not None:  # a strategy bug, or Hypothesis giving up: an error, not a crash
                for s in pending:
                    self.tallies[s].broken = error
                break
            if final is None:  # no failure: every pending side searched its whole budget
                for s in pending:
                    self.tallies[s].complete = True
                    self.tallies[s].exhausted = stopped == "nothing left to do"
                break
            if self.cfg.breadth != "narrow":
                final = self._smaller(cases, final)
            for s in list(pending):
                v = final.sides.get(s)
                if v is None or v.status not in ("fail", "error") or (s, failure_class(v)) not in self._wanted:
                    continue
                t = self.tallies[s]
                earlier = t.final.sides.get(s) if t.final is not None else None
                if earlier is not None:  # a wrong forward, found after the backward failed: both are said
                    v.notes.append(f"the backward fails too, on another case: {_short(earlier)}")
                t.final, t.examples_final = final, t.examples
                # a wrong forward is the first thing to say; after a backward's failure, search the forward
                pending[s] = frozenset() if failure_class(v) == "forward" or not own_forward or s[0] == "numeric" \
                    else FORWARD
                if not pending[s]:
                    del pending[s]

    def _smaller(self, cases, final: Evaluation) -> Evaluation:
        """The same failure on a case with fewer elements, when there is one. Hypothesis shrinks each
        choice towards its first option, and the first geometry of a table is not always the smallest
        that fails: a search among the cases smaller than the shrunk one finds it (twice at most)."""
        for _ in range(2):
            size = _elements(final.case)
            if size <= SMALL_CASE:
                break
            self._round = [s for s, v in final.sides.items() if v.status in ("fail", "error")]
            self._failure, self.last_fail = final.failures() & self._wanted, None
            _, error = self._search(cases.filter(lambda c, size=size: _elements(c) < size), -1)
            if error is not None or self.last_fail is None:
                break
            final = self.last_fail
        return final

    def _search(self, cases, attempt: int) -> tuple[str | None, str | None]:
        """One Hypothesis search over the round's sides: (why Hypothesis stopped, the error that ended it)."""
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
        rounds = "" if attempt == 0 else ("/smaller" if attempt < 0 else "") + "/" + "+".join(
            f"{o}:{d}" for o, d in self._round)
        _set_database_key(test, f"gradaudit/{self.target.name}/{self.regime}/{self.dtype}{rounds}")
        stats: dict = {}
        try:
            with _statistics(stats), module_independent_draws():
                test()
        except Disagreement:
            pass
        except Exception as e:
            if self.last_fail is None:
                return stats.get("stopped-because"), f"the search itself failed: {type(e).__name__}: {e}"
        return stats.get("stopped-because"), None

    # ---- the records ---------------------------------------------------------------------------

    def base(self, side: Side) -> dict:
        oracle, device = side
        t = self.target
        framework = t.framework(oracle)
        return new_record(target=t.name, op=t.op, oracle=oracle, device=device, dtype=self.dtype, regime=self.regime,
                          id=cell_id(target=t.name, op=t.op, oracle=oracle, device=device, dtype=self.dtype,
                                     regime=self.regime),
                          family=self.family, source=self.source,
                          device_name=device_name(framework, device), flags=oracle_flags(framework))

    def records(self) -> list[tuple[dict, SavedCase | None]]:
        """Every cell's record, with the case to save before it (failing cells)."""
        out = [(dict(self.base(s), status="skip", examples=0, message=self.tallies[s].skip), None)
               for s in self.sides if self.tallies[s].skip is not None]
        hazards = [h.to_json() for h in self.hazards.values()]
        settled = set()
        for s in self.live:
            final = self.tallies[s].final
            if final is not None and id(final) not in settled:
                settled.add(id(final))
                triangulate(self.spec, self.target, final)
                settle_severity(self.spec, self.target, final, self.regime)
        budget = self.cfg.examples or PROFILES[self.cfg.profile]["max_examples"]
        for s in self.live:
            t = self.tallies[s]
            rec, saved = self.base(s), None
            rec.update(examples=t.examples, hazards=hazards, mutated=list(self.mutated))
            v = t.final.sides.get(s) if t.final is not None else None
            if v is not None and v.status in ("fail", "error"):
                rec.update(verdict_fields(v, t.final), examples=t.examples_final)
                saved = saved_case(t.final, s, v)
                rec.update(replay=f"gradaudit replay {shlex.quote(rec['id'])}")  # a user's name may hold anything
            elif t.broken is not None or not t.complete:
                rec.update(status="error", severity="fail", message=t.broken or
                           f"the search stopped after {t.examples} of {budget} examples")
            elif t.kinks:
                rec.update(status="kink", kink=t.kink_reason,
                           message=f"{t.kinks} of {t.examples} examples on a kink: {t.kink_reason}")
                if t.worst is not None:
                    rec.update(figures(t.worst, t.worst_ev))
            else:
                every = " (every case the strategy can draw)" if t.exhausted and t.examples < budget else ""
                rec.update(status="pass", message=f"{t.examples} examples agree{every}")
                if t.worst is not None:
                    rec.update(figures(t.worst, t.worst_ev))
                    rec["worst_target"] = finite_or_none(t.worst.cmp.ratio)
                    rec["message"] += f"; worst error {t.worst.cmp.ratio:.2g} of the tolerance ({t.worst.phase})"
            if rec["status"] in ("pass", "kink"):
                rec["severity"] = "warning" if hazards else None
            if s[1] != "cpu":  # the CPU-vs-GPU differential and run-to-run spread, on the case shown
                shown = t.final if v is not None and v.status in ("fail", "error") else t.worst_ev
                if shown is not None:
                    rec.update(device_figures(self.target, shown, s, self.spec.tolerance if self.spec else None))
            out.append((rec, saved))
        return out


SMALL_CASE = 24  # elements: a failing case this small is read at a glance; no search for a smaller one
FORWARD, BACKWARD = frozenset({"forward"}), frozenset({"backward", "error"})  # what a side searches for


def _short(v: Verdict) -> str:
    """An earlier verdict of a side, in a few words: the error, or which gradient disagreed."""
    return v.fault if v.fault else f"{v.phase} disagrees ({v.kind})"


def _elements(case: Case) -> int:
    return sum(int(np.size(a)) for a in case.arrays.values())


@contextlib.contextmanager
def _statistics(into: dict):
    """Hypothesis's statistics of the search run inside (why it stopped: `stopped-because`). Its pytest
    plugin reads them through this collector too; there is no other way to ask."""
    from hypothesis.statistics import collector

    with collector.with_value(into.update):
        yield


def run_target_cells(spec: OpSpec | None, target: Target, inputs: Callable[[str, str], object],
                     regimes: Iterable[str], cfg: RunConfig, sink, *, done: Iterable[str] = (), family: str = "",
                     source: str = "", case_meta: dict | None = None) -> list[dict]:
    """Search every dtype x regime of `target` (`inputs(regime, breadth)` draws its cases) over every
    side of `cfg`; write each record to `sink` (a failing cell's case first) and return them all.
    Groups whose cells are all in `done` (ids of cells already recorded: a resumed run) are skipped."""
    done = set(done)
    out = []
    for dtype in cfg.dtypes:
        if spec is not None and spec.dtypes is not None and dtype not in spec.dtypes:
            continue
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
