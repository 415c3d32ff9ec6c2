"""A fuzzing campaign (`gradaudit fuzz`): each target x dtype x regime searched for a time budget, K value
sets per Hypothesis example (properties/fuzz_batch.py), verified inputs per second counted.

Hypothesis chooses the structure (shapes, params) and the first value set of each example; the batch
draws the rest. The search runs in rounds of Hypothesis examples until the group's time is spent,
without shrinking: a failing example stops it (Hypothesis saves it in the example database under
`gradaudit-fuzz/<target>/<regime>/<dtype>`, and the next campaign replays it first). Its first failing
value set is then replayed as the first Hypothesis example of the ordinary search (runner.GroupSearch,
every side, the per-example check of `gradaudit run`), which triangulates it, searches for a smaller
case of the same failure, and writes the records and the saved case that `gradaudit replay` re-runs.
A group that finds nothing gets one record per cell: its value sets, the rate, the worst error
(figures from `evaluate` on the value set nearest to failing).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace

import numpy as np
from hypothesis import Phase, given, reject, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from reports.cases import write_case

from . import strategies
from .cell_record import figures, finite_or_none
from .config import RunConfig, hypothesis_settings, module_independent_draws
from .fuzz_batch import BatchCheck, ValueSet, draw_value_sets
from .runner import GroupSearch, example_database
from .spec import Case, OpSpec
from .target import Target

__all__ = ["FuzzGroup", "SeededCase", "batch_size", "fuzz_jobs", "fuzz_target_cells", "rates", "write_rates"]

# Value sets per Hypothesis example: enough that the example's own cost (1-3 ms of Hypothesis, a batched
# oracle call each) is spread thin, few enough that a batch stays near BATCH_SECONDS (a conv or LSTM
# value set costs ~20x an affine one: the reference's own per-call cost, times its finite differences).
# A group measures the cost on its first example and keeps its K: JAX compiles once per shape and K.
BATCH_SECONDS = 0.2
K_MAX, K_MIN = 256, 8
# A bug that shows on some structures only (overlapping windows, a batch of more than one) is found by
# trying structures, and Hypothesis proposes the simplest one again and again (a conv2d group drew the
# 1x1-kernel, batch-1 geometry in 4 of its first 5 examples). A group's first DISTINCT_FIRST batches
# are of distinct structures: it skips a structure it has already batched (each skip costs a draw,
# ~1-3 ms), unless REPEATS_IN_A_ROW proposals in a row were repeats (its structures are then likely
# all seen). Past those, repeats are batched: a repeated shape's JAX program is compiled already (a
# new shape costs a ~0.1-0.5 s compile), which is what keeps a long campaign's rate near the batch's.
DISTINCT_FIRST = 6
REPEATS_IN_A_ROW = 16


def batch_size(seconds_per_set: float) -> int:
    fit = BATCH_SECONDS / max(seconds_per_set, 1e-9)
    return int(min(K_MAX, max(K_MIN, 2 ** int(np.floor(np.log2(max(fit, 1.0)))))))


class Found(AssertionError):
    """A value set failed: raised in the Hypothesis test (which does not shrink in a campaign)."""


@dataclass
class SeededCase(Case):
    """A case with its upstream gradient's seed: how a fuzzing finding enters the ordinary search."""

    dout_seed: int = 0


class _Replay(GroupSearch):
    """The ordinary search, whose first example is the fuzzing finding (its own upstream seed)."""

    def check(self, case: Case, dout_seed: int) -> None:
        super().check(case, case.dout_seed if isinstance(case, SeededCase) else dout_seed)


class FuzzGroup:
    """One target x dtype x regime, fuzzed for a time budget."""

    def __init__(self, spec: OpSpec, target: Target, dtype: str, regime: str, cfg: RunConfig):
        self.spec, self.target, self.dtype, self.regime, self.cfg = spec, target, dtype, regime, cfg
        self.search = GroupSearch(spec, target, dtype, regime, cfg)  # the cells, their sides and skips
        self.batch = BatchCheck(spec, target, dtype, self.search.live)
        self.verified = self.exact = self.examples = 0  # value sets judged, ... by evaluate, Hypothesis examples
        self.kinks: dict = {}
        self.kink_reason: dict = {}
        self.worst: dict = {}  # side -> (ratio, value set)
        self.hazards: dict = {}
        self.mutated: dict = {}
        self.finding: tuple[ValueSet, float] | None = None  # the failing value set, and when it was found
        self.seconds = 0.0
        self._start = 0.0
        self.k: int | None = None  # value sets per example (see batch_size)
        self._structures_seen: set | None = set()  # None once repeats are batched again (DISTINCT_FIRST)
        self._repeats = 0

    def _check(self, structure, dout_seed: int, seed: int) -> None:
        if self.finding is None:  # else Hypothesis replays the failing example to report it: fail again
            if self._repeated(structure[0]):
                reject()
            self._batch(*structure, dout_seed, seed)
        if self.finding is not None:
            raise Found(f"{self.finding[0].case.summary()}, upstream seed {self.finding[0].dout_seed}")

    def _repeated(self, case: Case) -> bool:
        """Whether to skip `case`: its structure (shapes, params) was batched already (DISTINCT_FIRST)."""
        if self._structures_seen is None:
            return False
        # params are structure too (strides, labels, masks); an array's repr elides a long one's middle
        key = (tuple((n, a.shape) for n, a in case.arrays.items()),
               tuple((k, v.shape, v.tobytes()) if isinstance(v, np.ndarray) else (k, repr(v))
                     for k, v in sorted(case.params.items())))
        if key not in self._structures_seen:
            self._structures_seen.add(key)
            self._repeats = 0
            if len(self._structures_seen) >= DISTINCT_FIRST:
                self._structures_seen = None
            return False
        self._repeats += 1
        if self._repeats >= REPEATS_IN_A_ROW:
            self._structures_seen = None
            return False
        return True

    def _batch(self, case: Case, origins: dict, dout_seed: int, seed: int) -> None:
        self.examples += 1
        if self.k is None and origins:  # K once per group, before JAX compiles anything for it
            probe = draw_value_sets(case, origins, dout_seed, seed, K_MIN)
            self.k = batch_size(min(self.batch.cost(probe) for _ in range(2)))
        sets = draw_value_sets(case, origins, dout_seed, seed, self.k if origins else 1)
        res = self.batch.run(sets)
        for h in res.hazards:
            self.hazards.setdefault(h.message, h)
        self.mutated.update(dict.fromkeys(res.mutated))
        if res.failure is not None:
            self.finding = (res.failure[1], time.perf_counter() - self._start)
            return
        self.verified += res.verified
        self.exact += res.exact
        for s, n in res.kinks.items():
            self.kinks[s] = self.kinks.get(s, 0) + n
            self.kink_reason[s] = res.kink_reason[s]
        for s, (ratio, i) in res.worst.items():
            if s not in self.worst or ratio > self.worst[s][0]:
                self.worst[s] = (ratio, sets[i])

    def _structures(self):
        cases = self.spec.inputs(self.regime, self.cfg.breadth)

        @st.composite
        def structures(draw):
            with strategies.origins() as seen:
                case = draw(cases)
            return case, {n: (r, s) for n, a in case.arrays.items() for arr, r, s in seen if arr is a}
        return structures()

    def run(self, seconds: float, clock=time.perf_counter) -> None:
        """Search until `seconds` are spent or a value set fails. `clock`: what the seconds are counted
        on — wall time for a campaign; the honesty test counts this process's CPU time
        (time.process_time), which a shared machine's other work does not eat into."""
        if not self.search.live:
            return
        cfg = self.cfg
        db = example_database(cfg.database) if cfg.database is not None and cfg.profile != "ci" else None
        structures = self._structures()
        _warm_up()
        key = f"gradaudit-fuzz/{self.target.name}/{self.regime}/{self.dtype}".encode()
        self._start, t0 = time.perf_counter(), clock()
        per_example, rounds = None, 0
        while self.finding is None:
            left = seconds - (clock() - t0)
            if left <= 0:
                break
            n = 2 if per_example is None else int(min(1000, max(1, left / per_example)))
            test = given(structure=structures, dout_seed=st.integers(0, 2**16),
                         seed=st.integers(0, 2**32 - 1))(self._check)
            # no shrinking: the finding is shrunk by the ordinary search it is replayed in
            run = settings(hypothesis_settings(replace(cfg, examples=n)), database=db, derandomize=False,
                           phases=(Phase.explicit, Phase.reuse, Phase.generate))(test)
            if cfg.seed is not None:
                run = hypothesis_seed(cfg.seed + rounds)(run)
            run._hypothesis_internal_database_key = key
            before, started = self.examples, clock()
            try:
                with module_independent_draws():  # one --seed, the same structures in every process
                    run()
            except Found:
                break
            per_example = (clock() - started) / max(self.examples - before, 1)
            rounds += 1
        self.seconds = time.perf_counter() - self._start

    # ---- the records ---------------------------------------------------------------------------

    def records(self) -> list[tuple[dict, object]]:
        """One record per cell: the replayed finding's (ordinary records), else the campaign's tallies."""
        if self.finding is not None:
            vs = self.finding[0]
            replay = _Replay(self.spec, self.target, self.dtype, self.regime, replace(self.cfg, database=None))
            first = SeededCase(vs.case.arrays, vs.case.params, vs.dout_seed)
            replay.run(st.one_of(st.just(first), self.spec.inputs(self.regime, self.cfg.breadth)))
            return replay.records()
        s0 = self.search
        out = [(dict(s0.base(s), status="skip", examples=0, message=s0.tallies[s].skip), None)
               for s in s0.sides if s0.tallies[s].skip is not None]
        hazards = [h.to_json() for h in self.hazards.values()]
        rate = self.verified / self.seconds if self.seconds > 0 else 0.0
        shown = {}
        for s in s0.live:
            rec = s0.base(s)
            rec.update(examples=self.verified, hazards=hazards, mutated=list(self.mutated))
            if self.verified == 0:
                rec.update(status="error", severity="fail", message="the fuzzing search checked no value set")
                out.append((rec, None))
                continue
            how = f"fuzzing, {rate:,.0f}/s, {self.exact} judged one by one"
            if self.kinks.get(s):
                rec.update(status="kink", kink=self.kink_reason[s],
                           message=f"{self.kinks[s]} of {self.verified} value sets on a kink ({how}): "
                                   f"{self.kink_reason[s]}")
            else:
                rec.update(status="pass", message=f"{self.verified} value sets agree ({how})")
            if s in self.worst:
                vs = self.worst[s][1]
                if id(vs) not in shown:
                    shown[id(vs)] = self.batch.exact(vs)
                v = shown[id(vs)].sides.get(s)
                if v is not None and v.status == "pass" and v.cmp is not None:
                    rec.update(figures(v, shown[id(vs)]))
                    rec["worst_target"] = finite_or_none(v.cmp.ratio)
                    if rec["status"] == "pass":
                        rec["message"] += f"; worst error {v.cmp.ratio:.2g} of the tolerance ({v.phase})"
            rec["severity"] = "warning" if hazards else None
            out.append((rec, None))
        return out


@functools.cache
def _warm_up() -> None:
    """The first Hypothesis test of a process registers torch's generator, and runs gc.collect() for
    it (~0.5 s with torch and JAX loaded): paid here, before a group's clock starts."""
    settings(database=None, max_examples=1, deadline=None)(given(st.none())(lambda _: None))()


def fuzz_target_cells(spec: OpSpec, target: Target, cfg: RunConfig, sink, *, seconds: float,
                      regimes=None, done=()) -> list[dict]:
    """Fuzz every dtype x regime of `target` for `seconds` in all (split evenly); write the records."""
    groups = [(d, r) for d in cfg.dtypes if spec.dtypes is None or d in spec.dtypes
              for r in (regimes or spec.regimes)]
    out = []
    for dtype, regime in groups:
        group = FuzzGroup(spec, target, dtype, regime, cfg)
        t0 = time.perf_counter()  # after the process's one-off imports and warm-ups (FuzzGroup's)
        group.run(seconds / max(len(groups), 1))
        written = group.records()
        share = round((time.perf_counter() - t0) / max(len(written), 1), 4)
        for rec, saved in written:
            rec["seconds"] = share
            if saved is not None:
                saved.meta.update(op=target.op, target=target.name, regime=regime, id=rec["id"])
                rec["counterexample"] = write_case(cfg.report_dir, rec["id"], saved)
            sink.write(rec)
            out.append(rec)
    return out


def _fuzz_catalogue_op(op: str, dtype: str, seconds: float, sink, cfg: RunConfig, done=()) -> list[dict]:
    from . import catalogue

    spec = catalogue.load()[op]
    return fuzz_target_cells(spec, Target.reference(spec), replace(cfg, dtypes=(dtype,)), sink, seconds=seconds)


def fuzz_jobs(ops, dtypes, seconds: float) -> list[tuple[str, object]]:
    """One job per (op, dtype), each fuzzing for `seconds` (properties.session's jobs)."""
    dtypes = tuple(dtypes)
    return [(f"{op} {dtype}", functools.partial(_fuzz_catalogue_op, op, dtype, seconds)) for op in ops
            for dtype in dtypes]


def rates(records) -> dict:
    """Per op: value sets verified (each group's once: every side judged the same ones), seconds spent
    (the groups' wall time, records and replays included), verified inputs per second, findings."""
    out: dict = {}
    groups = set()
    for r in records:
        if r.get("status") == "skip":
            continue
        o = out.setdefault(r["op"], {"verified": 0, "seconds": 0.0, "findings": 0})
        o["seconds"] += float(r.get("seconds") or 0.0)
        o["findings"] += r.get("status") in ("fail", "error")
        group = (r["op"], r.get("target"), r["dtype"], r["regime"])
        if group not in groups:
            groups.add(group)
            o["verified"] += int(r.get("examples") or 0)
    for o in out.values():
        o["seconds"] = round(o["seconds"], 3)
        o["per_s"] = round(o["verified"] / o["seconds"], 1) if o["seconds"] > 0 else None
    return out


def write_rates(report_dir) -> str:
    """`fuzz.json` (rates per op, from results.jsonl) in the report folder; the lines to print."""
    import json
    from pathlib import Path

    from reports.records import load_records

    per_op = rates(load_records([Path(report_dir) / "results.jsonl"]))
    (Path(report_dir) / "fuzz.json").write_text(json.dumps({"rates": per_op}, indent=1))
    lines = [f"{op}: {o['verified']:,} value sets verified in {o['seconds']:.1f} s ({o['per_s'] or 0:,.0f}/s)"
             + (f", {o['findings']} finding(s)" if o["findings"] else "") for op, o in sorted(per_op.items())]
    return "fuzzing rates (verified inputs per second, per op):\n  " + "\n  ".join(lines)
