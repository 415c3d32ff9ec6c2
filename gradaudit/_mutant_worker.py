"""The child process of `gradaudit mutate`: imports mutants and judges them, one after the other.

Started by gradaudit.mutate with a JSON job on stdin and a pipe (`ctl_fd`) back to the parent:

    S <id>        starting an item (a mutant, or an original to check first)
    R <json>      its result
    D             all done

The parent times each item out and starts a fresh child for the rest when one dies, so a mutant
that hangs or crashes costs one item. Descriptors 1 and 2 go to a log file before any mutant is
imported: what the code under test prints never reaches the terminal.

For each item and each of its judges (the targets whose check can see the change):

1. the probe: the original and the mutant backward on the same inputs, float64, drawn from the
   judge's own strategies in every value regime at both shape breadths (the ci profile's few
   geometries and the full sets). It decides *equivalent* (the same gradient everywhere, and
   nothing written into the upstream gradient; a different choice at an exact kink counts as the
   same when it is still a valid subgradient, the catalogue's own rule) and *invalid* (raises, or
   returns the wrong number or shape of gradients, on every input), and keeps where the mutant
   differs, to explain a survivor;
2. the check: gradaudit's own, as a user runs it (`gradaudit.check` on a module that holds just
   the judge's functions, or `gradaudit run --ops OP` with the reference backward replaced);
3. for the benchmark, any extra judges named in the job (`path.py:function`).
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
import tempfile
import time
import traceback
import types
import warnings
from pathlib import Path

import numpy as np

from gradaudit.mutant_probe import combine, draw_cases, probe



def main() -> None:
    job = json.loads(sys.stdin.read())
    ctl = job["ctl_fd"]

    def emit(line: str) -> None:
        os.write(ctl, (line.replace("\n", " ") + "\n").encode("utf-8", "replace"))

    log = os.open(job.get("log") or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), write_through=True)
    warnings.simplefilter("ignore")
    try:
        session = Session(job)
        for item in job["items"]:
            emit(f"S {item['id']}")
            t0 = time.perf_counter()
            try:
                res = session.judge(item)
            except Exception as e:  # noqa: BLE001  gradaudit's own failure on this item: report it, go on
                res = {"id": item["id"], "internal_error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()}
            res["seconds"] = round(time.perf_counter() - t0, 3)
            emit("R " + json.dumps(res, default=_json_default))
        emit("D")
    finally:
        os._exit(0)  # skip interpreter shutdown: framework thread teardown, the mutants' atexit hooks


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


# ---- loading the code under test ---------------------------------------------------------------

def load_module(path: str, name: str, *, package: str | None = None, folder: str | None = None):
    """A fresh module from `path`; `package` makes relative imports work (a reference module);
    `folder` (the original file's) goes at the end of sys.path for its sibling imports."""
    if folder and folder not in sys.path:
        sys.path.append(folder)
    full = f"{package}.{name}" if package else name
    spec = importlib.util.spec_from_file_location(full, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[full] = module
    spec.loader.exec_module(module)
    return module


class Subject:
    """One judge's view of a module: the op's spec, the target (forward + backward), the inputs."""

    def __init__(self, kind, judge, op, spec, target, inputs, regimes, array_names, module):
        self.kind, self.judge, self.op, self.spec, self.target = kind, judge, op, spec, target
        self.inputs, self.regimes, self.array_names, self.module = inputs, tuple(regimes), tuple(array_names), module
        self.raw: list | None = None


def _spy(fn, into: list):
    def spied(*args, **kwargs):
        out = fn(*args, **kwargs)
        into.append(out)
        return out
    return spied


def subject(kind: str, judge: str, module, notes=None) -> Subject:
    from properties import catalogue

    known = catalogue.load()
    if kind == "cs231n":
        from gradaudit import cs231n

        pair = cs231n.BY_TARGET[judge]
        fns = {n: getattr(module, n) for n in pair.functions if hasattr(module, n)}
        raw: list = []
        fns[pair.target] = _spy(fns[pair.target], raw)
        target, inputs = cs231n.build_target(pair, fns, {} if notes is None else notes)
        spec = known[pair.op]
        subj = Subject(kind, judge, pair.op, spec, target, inputs, spec.regimes, spec.array_names, module)
        subj.raw = raw  # what the user's function returned, before the adapter reshaped it
        return subj
    if kind == "derivation":
        from gradaudit.audit import derivations_in

        d = next(d for d in derivations_in(module) if d.name == judge)
        return Subject(kind, judge, judge, d.spec(), d.target(), d.inputs, d.regimes, list(d.arrays), module)
    from properties.target import Target

    spec = known[judge]
    target = Target(f"{judge}_backward", judge, spec.forward, getattr(module, f"{judge}_backward"))
    return Subject(kind, judge, judge, spec, target, spec.inputs, spec.regimes, spec.array_names, module)


# ---- the check, as a user runs it ------------------------------------------------------------

def check_records(kind: str, judge: str, module, path: str, cfg: dict, scratch: str) -> list[dict]:
    """gradaudit's verdicts on `judge` with `module`'s code, as records."""
    report = tempfile.mkdtemp(prefix="check-", dir=scratch)
    if kind == "catalogue":
        import reference_impl
        from properties.config import RunConfig
        from properties.session import catalogue_jobs, run_session

        # `gradaudit run --ops judge`, with the package's backward replaced (Target.reference looks it up)
        run_cfg = RunConfig(oracles=tuple(cfg["oracles"]), dtypes=tuple(cfg["dtypes"]), profile=cfg["profile"],
                            examples=cfg.get("examples"), seed=cfg.get("seed"), report_dir=Path(report),
                            # a fresh example database per check: no mutant replays another's failures
                            database=None if cfg["profile"] == "ci" else os.path.join(report, "db"))
        name = f"{judge}_backward"
        saved = getattr(reference_impl, name)
        setattr(reference_impl, name, getattr(module, name))
        try:
            records, _ = run_session(run_cfg, catalogue_jobs([judge], run_cfg.dtypes), what=[judge],
                                     command=["gradaudit", "mutate", "--ops", judge])
        finally:
            setattr(reference_impl, name, saved)
        return records
    import gradaudit

    view = types.ModuleType(f"{module.__name__}__{judge}")
    view.__file__ = path
    if kind == "cs231n":
        from gradaudit import cs231n

        for n in cs231n.BY_TARGET[judge].functions:
            if hasattr(module, n):
                setattr(view, n, getattr(module, n))
        convention = "cs231n"
    else:
        from gradaudit.audit import derivations_in

        d = next(d for d in derivations_in(module) if d.name == judge)
        setattr(view, d.name, d)
        convention = None
    return gradaudit.check(view, convention=convention, oracles=tuple(cfg["oracles"]), dtypes=tuple(cfg["dtypes"]),
                           profile=cfg["profile"], examples=cfg.get("examples"), seed=cfg.get("seed"),
                           report=report, raise_on_failure=False)


def verdict(records: list[dict]) -> dict:
    statuses: dict = {}
    for r in records:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    bad = [r for r in records if r["status"] in ("fail", "error")]
    # a write into dout or the inputs is a warning with correct values (`mutation` hazard), which the
    # check reports and --strict fails on: the mutant is caught
    bad = bad or [r for r in records if any(isinstance(h, dict) and h.get("kind") == "mutation"
                                            for h in r.get("hazards") or ())]
    out = {"killed": bool(bad), "cells": len(records), "statuses": statuses,
           "regimes": sorted({r.get("regime") for r in records if r.get("regime") not in (None, "-")}),
           "examples": max([r.get("examples") or 0 for r in records] or [0])}
    if bad:
        r = bad[0]
        out["by"] = {k: r.get(k) for k in ("id", "status", "kind", "pattern", "oracle", "dtype", "regime", "shapes")}
        out["by"]["message"] = str(r.get("message") or "")[:400]
    return out


# ---- one session: items in order, originals and cases cached ----------------------------------

class Session:
    def __init__(self, job: dict):
        self.job = job
        self.kind = job["kind"]
        self.cfg = job["cfg"]
        self.scratch = job["scratch"]
        self.originals: dict = {}  # module key -> module
        self.cases: dict = {}  # judge -> drawn cases
        self.extra = [self._extra(e) for e in job.get("extra", [])]
        self.count = 0
        from properties.session import prepare_process

        prepare_process()  # one BLAS and torch thread, JAX's compile cache: as `gradaudit run` sets up

    @staticmethod
    def _extra(spec: str):
        path, _, fn = spec.rpartition(":")
        mod = load_module(path, f"_gradaudit_extra_{abs(hash(path))}")
        return getattr(mod, fn)

    def _module(self, item: dict, original: bool):
        self.count += 1
        if self.kind == "catalogue":
            if original:
                return importlib.import_module(item["module"])
            return load_module(item["path"], f"_mutant_{self.count}", package="reference_impl")
        folder = os.path.dirname(os.path.abspath(self.job["original"]))
        if original:
            key = self.job["original"]
            if key not in self.originals:
                self.originals[key] = load_module(key, f"_gradaudit_original_{self.count}", folder=folder)
            return self.originals[key]
        return load_module(item["path"], f"_gradaudit_mutant_{self.count}", folder=folder)

    def judge(self, item: dict) -> dict:
        res = {"id": item["id"], "judges": {}}
        original = self._module(item, True)
        if item.get("path") is None:  # the original: does its check pass? what do the extra judges say?
            for j in item["judges"]:
                t0 = time.perf_counter()
                v = verdict(check_records(self.kind, j, original, self.job["original"] or "", self.cfg, self.scratch))
                v["seconds"] = round(time.perf_counter() - t0, 3)
                res["judges"][j] = {"check": v}
                if self.extra:
                    subj = subject(self.kind, j, original)
                    res["judges"][j]["extra"] = {k: v for f in self.extra for k, v in f(subj, subj).items()}
            return res
        mutant = self._module(item, False)
        statuses = []
        for j in item["judges"] if item.get("probe", True) else ():
            o, m = subject(self.kind, j, original), subject(self.kind, j, mutant)
            if j not in self.cases:
                n = self.job.get("probe", {})
                self.cases[j] = draw_cases(o, n.get("narrow", 8), n.get("full", 16))
            t0 = time.perf_counter()
            p = probe(o, m, self.cases[j])
            p["seconds"] = round(time.perf_counter() - t0, 3)
            res["judges"][j] = {"probe": p}
            statuses.append(p["status"])
        if statuses:
            res["probe_status"] = combine(statuses)
        if res.get("probe_status") == "invalid" or not item.get("check", True):
            return res
        for j in item["judges"]:
            t0 = time.perf_counter()
            records = []
            try:
                # one dtype at a time: each (dtype, regime) cell is its own search, so stopping at the
                # first dtype that kills gives the verdict of the whole check at about half the cost
                for dtype in self.cfg["dtypes"]:
                    records += check_records(self.kind, j, mutant, item["path"], dict(self.cfg, dtypes=[dtype]),
                                             self.scratch)
                    if verdict(records)["killed"]:
                        break
                v = verdict(records)
            except Exception as e:  # noqa: BLE001
                v = {"killed": False, "internal_error": f"{type(e).__name__}: {e}"}
            v["seconds"] = round(time.perf_counter() - t0, 3)
            res["judges"].setdefault(j, {})["check"] = v
            if v.get("killed") and not self.extra:
                break  # killed is killed: the other judges' checks cannot change that
        if self.extra:
            for j in item["judges"]:
                o, m = subject(self.kind, j, original), subject(self.kind, j, mutant)
                res["judges"][j]["extra"] = {k: v for f in self.extra for k, v in f(m, o).items()}
        return res


if __name__ == "__main__":
    main()
