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

import contextlib
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

EQUIV_RTOL = 1e-9  # float64 gradients of the same formula agree to ~1e-15; a mistake is far above this
EQUIV_ATOL = 1e-12  # times the case's magnitude: a gradient of 1e-17 where 0 is right is rounding, not a bug


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


def _shapes(v) -> list:
    return [list(np.shape(a)) if isinstance(a, np.ndarray) else type(a).__name__ for a in _as_tuple(v)]


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


# ---- the probe: does the mutant compute another gradient, and where? ----------------------------

def draw_cases(subj: Subject, n_narrow: int, n_full: int) -> list[tuple]:
    """(regime, breadth, case, dout seed) drawn from the judge's strategies, reproducibly."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    out = []
    for regime in subj.regimes:
        for br, n in (("narrow", n_narrow), ("full", n_full)):
            if n <= 0:
                continue
            got = []

            def collect(case, seed):
                got.append((case, seed))

            test = settings(max_examples=n, derandomize=True, database=None, phases=[Phase.generate],
                            deadline=None, suppress_health_check=list(HealthCheck))(
                given(subj.inputs(regime, br), st.integers(0, 2**31 - 1))(collect))
            with contextlib.suppress(Exception):
                test()
            out += [(regime, br, c, s) for c, s in got]
    return out


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def run_side(subj: Subject, case, douts):
    """(forward output, gradients as a tuple, whether the backward wrote into dout, the shapes the
    user's function itself returned), on private copies."""
    arrays = [np.array(a, copy=True) for a in case.arrays.values()]
    params = {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for k, v in case.params.items()}
    if subj.raw is not None:
        subj.raw.clear()
    out, cache = subj.target.forward(*arrays, **params)
    d = [np.array(x, copy=True) for x in douts]
    grads = _as_tuple(subj.target.backward(*d, cache))
    written = any(not np.array_equal(a, b, equal_nan=True) for a, b in zip(d, douts))
    raw = _shapes(subj.raw[-1]) if subj.raw else None
    return _as_tuple(out), grads, written, raw


def geometry(case) -> str:
    shapes = ", ".join(f"{n}{tuple(a.shape)}" for n, a in case.arrays.items())
    params = ", ".join(f"{k}={v!r}" for k, v in case.scalar_params().items() if not isinstance(v, (list, dict)))
    return shapes + (f"; {params}" if params else "")


def difference(g0, g1, scale: float) -> tuple[str | None, float, list]:
    """(None | 'count' | 'shape', worst relative difference, names of the gradients that differ)."""
    if len(g0) != len(g1):
        return "count", float("inf"), []
    worst, which = 0.0, []
    for k, (a, b) in enumerate(zip(g0, g1)):
        try:
            a = np.asarray(a, dtype=np.float64)
            b = np.asarray(b, dtype=np.float64)
        except (TypeError, ValueError):
            return "shape", float("inf"), [k]
        if a.shape != b.shape:
            return "shape", float("inf"), [k]
        fa, fb = np.isfinite(a), np.isfinite(b)
        if not np.array_equal(fa, fb) or not np.array_equal(a[~fa], b[~fb]):
            worst, which = float("inf"), which + [k]
            continue
        if not fa.any():
            continue
        err = float(np.abs(a[fa] - b[fb]).max())
        mag = float(np.abs(a[fa]).max())
        if err > EQUIV_RTOL * mag + EQUIV_ATOL * scale:
            which.append(k)
            worst = max(worst, err / max(mag, 1e-300))
    return None, worst, which


def probe(orig: Subject, mut: Subject, cases: list) -> dict:
    from properties.spec import Case

    s = {"cases": len(cases), "ran": 0, "broken": 0, "differs": 0, "kink_only": 0, "written": 0, "max_rel": 0.0,
         "by_regime": {}, "by_breadth": {"narrow": [0, 0], "full": [0, 0]}, "example": None, "error": None,
         "geoms_differ": [], "geoms_narrow": []}
    for regime, br, case, seed in cases:
        g = geometry(case)
        if br == "narrow" and g not in s["geoms_narrow"]:
            s["geoms_narrow"].append(g)
        with np.errstate(all="ignore"):
            try:
                out, _ = orig.target.forward(*[np.array(a, copy=True) for a in case.arrays.values()], **case.params)
                rng = np.random.default_rng(seed)
                douts = tuple(np.asarray(rng.standard_normal(np.shape(o))) for o in _as_tuple(out))
                o0, g0, w0, raw0 = run_side(orig, case, douts)
            except Exception:  # noqa: BLE001  the original cannot run this input: not evidence either way
                continue
            s["ran"] += 1
            r = s["by_regime"].setdefault(regime, [0, 0])
            r[1] += 1
            s["by_breadth"][br][1] += 1
            try:
                o1, g1, w1, raw1 = run_side(mut, case, douts)
            except Exception as e:  # noqa: BLE001
                s["broken"] += 1
                s["error"] = s["error"] or f"{type(e).__name__}: {e}"[:300]
                continue
        if raw0 != raw1:  # the adapter may reshape what the function returned: a wrong shape is still wrong
            s["broken"] += 1
            s["reshaped"] = s.get("reshaped", 0) + 1
            s["error"] = s["error"] or f"returns gradients of shapes {raw1}, the original {raw0}"
            continue
        scale = max([1.0] + [float(np.abs(np.asarray(a, dtype=np.float64)).max(initial=0))
                             for a in case.arrays.values()]
                    + [float(np.abs(d).max(initial=0)) for d in douts])
        # the forward output too: a loss function `loss, dx = f(x, y)` is mutated as a whole
        bad, rel, which = difference(g0 + o0, g1 + o1, scale)
        if bad:
            s["broken"] += 1
            s["error"] = s["error"] or f"the mutant returned the wrong {bad} of gradients"
            continue
        if which and all(k < len(g0) for k in which) and orig.spec is not None and orig.spec.kinks is not None \
                and orig.spec.subgradient is not None:
            c64 = Case({n: np.asarray(a, dtype=np.float64) for n, a in case.arrays.items()}, case.params)
            try:
                at_kink = orig.spec.kinks(c64, 0.0)
                ok = at_kink and orig.spec.subgradient(c64, douts, dict(zip(orig.array_names, g1)))[0]
            except Exception:  # noqa: BLE001
                ok = False
            if ok:
                s["kink_only"] += 1
                which = []
        written = w1 and not w0
        s["written"] += int(written)
        if which or written:
            s["differs"] += int(bool(which))
            r[0] += 1
            s["by_breadth"][br][0] += 1
            s["max_rel"] = max(s["max_rel"], rel)
            if g not in s["geoms_differ"] and len(s["geoms_differ"]) < 8:
                s["geoms_differ"].append(g)
            if s["example"] is None:
                names = [orig.array_names[k] if k < len(orig.array_names) else
                         ("forward" if k >= len(g0) else str(k)) for k in which]
                s["example"] = {"regime": regime, "breadth": br, "geometry": g, "grads": names,
                                "rel": rel, "written": written}
    if s["ran"] == 0:
        s["status"] = "unprobed"
    elif s["broken"] == s["ran"]:
        s["status"] = "invalid"
    elif s["differs"] or s["written"] or s["broken"]:
        s["status"] = "differs"
    else:
        s["status"] = "equivalent"
    return s


def combine(statuses: list[str]) -> str:
    """One mutant, several judges: it differs if any judge sees a difference."""
    for st in ("differs", "invalid", "equivalent"):
        if st in statuses:
            return st
    return "unprobed"


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
