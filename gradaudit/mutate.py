"""`gradaudit mutate`: how many wrong backwards would the check have caught?

Mutants of each backward (gradaudit/mutants.py: the mistakes people make deriving a gradient by
hand) are judged one by one in child processes (gradaudit/_mutant_worker.py):

- killed      gradaudit's check fails or errors on the mutant;
- survived    the mutant computes another gradient (the probe saw it) and the check passes;
- equivalent  the mutant computes the same gradient in float64 on every probe input, every value
              regime, both shape breadths, and writes nothing into the upstream gradient: no check
              could kill it, so it does not count against the score;
- invalid     the mutant raises, or returns the wrong number or shape of gradients, on every input
              (any checker rejects it on sight): reported, not scored.

score = killed / (killed + survived). Every survivor is listed with its diff and where it differs
from the original (regime, geometry, by how much), and is checked again in the dev profile (full
shape breadth, more examples) to say whether a longer search would have caught it.

    gradaudit mutate layers.py --convention cs231n        # your cs231n functions
    gradaudit mutate notes.py                             # your @gradaudit.derivation backwards
    gradaudit mutate --ops affine,conv2d                  # the catalogue's own reference backwards
    gradaudit mutate --ops all --workers 2                # all of them

Exit status: 0; 1 when the score is below --min-score; 2 bad usage; 3 gradaudit itself failed on
a mutant; 5 nothing to mutate.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .mutants import OPERATORS, backward_helpers, generate

__all__ = ["MutateUsageError", "OPERATORS", "Plan", "add_arguments", "classify", "cmd_mutate", "explain",
           "plan_file", "plan_ops", "render", "run", "summarize"]

EXIT_OK, EXIT_LOW, EXIT_INTERNAL, EXIT_NOTHING = 0, 1, 3, 5
WORKER = "gradaudit._mutant_worker"
PROBE = {"narrow": 8, "full": 16}  # inputs per value regime and shape breadth


class MutateUsageError(ValueError):
    """A bad argument to `gradaudit mutate` (the CLI prints it and exits 2)."""


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _known(kind: str, given, accepted) -> list:
    bad = [g for g in given if g not in accepted]
    if bad:
        raise MutateUsageError(f"unknown {kind} {', '.join(map(repr, bad))}; accepted: {', '.join(accepted)}")
    if not given:
        raise MutateUsageError(f"no {kind} given; accepted: {', '.join(accepted)}")
    return list(given)


def add_arguments(p) -> None:
    """The `gradaudit mutate` options (cli.py adds the subparser and calls this)."""
    p.add_argument("path", nargs="?", type=Path, default=None,
                   help="a .py file: cs231n functions (--convention cs231n) or @gradaudit.derivation backwards")
    p.add_argument("--ops", type=_csv, default=None,
                   help="mutate the catalogue's own reference backwards of these ops (comma-separated, or all) instead")
    p.add_argument("--convention", choices=("cs231n",), default=None, help="as for `gradaudit audit`")
    p.add_argument("-k", dest="select", default=None, metavar="NAME",
                   help="mutate only functions whose name contains NAME")
    p.add_argument("--operators", type=_csv, default=None,
                   help=f"mutation operators (default all): {', '.join(OPERATORS)}")
    p.add_argument("--profile", choices=("ci", "dev", "thorough"), default="ci",
                   help="the check's Hypothesis profile (default ci)")
    p.add_argument("--explain-profile", choices=("dev", "thorough", "none"), default="dev",
                   help="check survivors again in this profile to say whether a longer search kills them (default dev)")
    p.add_argument("--oracles", type=_csv, default=("torch", "jax", "numeric"), help="as for `gradaudit audit`")
    p.add_argument("--dtypes", type=_csv, default=("float64", "float32"), help="as for `gradaudit audit`")
    p.add_argument("--examples", type=int, default=None, help="examples per cell (default: the profile's)")
    p.add_argument("--workers", type=int, default=1, help="child processes judging mutants in parallel (default 1)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds one mutant may take before it is stopped and called invalid (default 300)")
    p.add_argument("--min-score", type=float, default=None,
                   help="exit 1 when the score (killed / (killed + survived), 0..1) is below this")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--keep", type=Path, default=None, help="write the mutant files into this folder and keep them")


# ---- what to mutate, and who judges each mutant ------------------------------------------------

@dataclasses.dataclass
class Plan:
    kind: str  # cs231n | derivation | catalogue
    original: str | None  # the user's file (None: the catalogue)
    mutants: list  # [(Mutant, judges, module name or None)]
    judges: dict  # judge -> module name (catalogue) or None
    label: str


def _functions(tree: ast.Module) -> dict:
    return {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _calls(fn) -> set:
    return {n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def _reach(fns: dict, roots) -> set:
    seen, todo = set(roots), list(roots)
    while todo:
        f = todo.pop()
        for g in _calls(fns[f]) if f in fns else ():
            if g in fns and g not in seen:
                seen.add(g)
                todo.append(g)
    return seen


def _select(names, select: str | None):
    return [n for n in names if select is None or select in n]


def plan_file(path: Path, convention: str | None, select: str | None, operators) -> Plan:
    """Mutants of a user's file, read without running it."""
    source = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise MutateUsageError(f"{path} does not parse: {e}") from None
    fns = _functions(tree)
    if convention == "cs231n":
        from . import cs231n

        run, _, _ = cs231n.plan(set(fns))
        targets = {p.target: p for p in run}
        # only backwards and the losses that return gradients are mutated; a pair whose target is a
        # forward (batchnorm_forward's modes) judges the backwards it calls, it is not mutated itself
        mutated = [t for t in targets if "backward" in t or "loss" in t]
        roots = {t: [f for f in p.functions if f in fns] for t, p in targets.items()}
        forwards = {t: p.forward for t, p in targets.items() if p.forward}
        losses = {t for t, p in targets.items() if p.forward is None}
        kind = "cs231n"
    else:
        targets, roots, forwards, losses = {}, {}, {}, set()
        for fn in fns.values():
            for dec in fn.decorator_list:
                if isinstance(dec, ast.Attribute) and dec.attr == "backward" and isinstance(dec.value, ast.Name):
                    targets[dec.value.id] = fn.name  # derivation name -> its backward
                    roots[dec.value.id] = [fn.name]
        mutated = list(targets)
        kind = "derivation"
    backwards = [targets[t].target if kind == "cs231n" else targets[t] for t in mutated]
    helpers = backward_helpers(source, backwards, [f for f in fns if f not in backwards and not f.startswith("_")])
    mutable = _select(backwards + sorted(helpers), select)
    mutants = []
    for m in generate(source, mutable, forwards=forwards, operators=operators, losses=losses, filename=path.name):
        judges = [t for t in targets if m.function in _reach(fns, roots[t])]
        mutants.append((m, judges, None))
    return Plan(kind, str(path.resolve()), mutants, {t: None for t in targets}, path.name)


def plan_ops(ops, select: str | None, operators) -> Plan:
    """Mutants of the catalogue's reference backwards of `ops`."""
    import inspect

    import reference_impl

    by_file: dict = {}
    for op in ops:
        fn = getattr(reference_impl, f"{op}_backward")
        by_file.setdefault((inspect.getsourcefile(fn), fn.__module__), []).append(op)
    mutants, judges = [], {}
    for (file, modname), chosen in by_file.items():
        source = Path(file).read_text(encoding="utf-8")
        fns = _functions(ast.parse(source))
        backwards = [f"{op}_backward" for op in chosen]
        every_backward = [f for f in fns if f.endswith("_backward") and not f.startswith("_")]
        helpers = backward_helpers(source, every_backward, [f for f in fns if not f.endswith("_backward")
                                                            and not f.startswith("_")])
        reach = {op: _reach(fns, [f"{op}_backward"]) for op in chosen}
        mutable = _select(backwards + sorted(h for h in helpers if any(h in r for r in reach.values())), select)
        forwards = {f"{op}_backward": f"{op}_forward" for op in chosen}
        for m in generate(source, mutable, forwards=forwards, operators=operators, filename=Path(file).name):
            mutants.append((m, [op for op in chosen if m.function in reach[op]], modname))
        judges.update({op: modname for op in chosen})
    label = "catalogue " + ",".join(ops) if len(ops) <= 6 else f"the catalogue ({len(ops)} ops)"
    return Plan("catalogue", None, mutants, judges, label)


# ---- children ---------------------------------------------------------------------------------

def _env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONHASHSEED", "0")
    return env


class Children:
    """Runs items in `workers` child processes; each item gets exactly one result."""

    def __init__(self, plan: Plan, cfg: dict, *, workers: int, timeout: float, scratch: str,
                 extra=(), probe=None, progress=None):
        self.plan, self.cfg, self.workers, self.timeout, self.scratch = plan, cfg, workers, timeout, scratch
        self.extra, self.probe, self.progress = list(extra), probe or PROBE, progress
        self.results: dict = {}
        self.lock = threading.Lock()

    def run(self, items: list[dict]) -> dict:
        chunks = _chunks(items, self.workers)
        threads = [threading.Thread(target=self._drive, args=(c, k), daemon=True) for k, c in enumerate(chunks) if c]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return self.results

    def _job(self, items, k) -> dict:
        return {"kind": self.plan.kind, "original": self.plan.original, "cfg": self.cfg, "items": items,
                "scratch": self.scratch, "extra": self.extra, "probe": self.probe,
                "log": os.path.join(self.scratch, f"worker-{k}.log")}

    def _done(self, res: dict) -> None:
        with self.lock:
            self.results[res["id"]] = res
            if self.progress:
                self.progress(res, len(self.results))

    def _drive(self, items: list[dict], k: int) -> None:
        remaining = list(items)
        while remaining:
            r, w = os.pipe()
            job = dict(self._job(remaining, k), ctl_fd=w)
            proc = subprocess.Popen([sys.executable, "-m", WORKER], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, pass_fds=(w,), env=_env(), cwd=self.scratch,
                                    start_new_session=True)
            os.close(w)
            try:
                proc.stdin.write(json.dumps(job).encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            current, started, finished, buf = None, time.monotonic(), False, b""
            done = set()
            try:
                while True:
                    ready, _, _ = select.select([r], [], [], 0.2)
                    if ready:
                        data = os.read(r, 1 << 16)
                        if not data:
                            break
                        buf += data
                        *lines, buf = buf.split(b"\n")
                        for line in lines:
                            kind, _, rest = line.decode("utf-8", "replace").partition(" ")
                            if kind == "S":
                                current, started = rest, time.monotonic()
                            elif kind == "R":
                                res = json.loads(rest)
                                done.add(res["id"])
                                self._done(res)
                                current = None
                            elif kind == "D":
                                finished = True
                    if current is not None and time.monotonic() - started > self.timeout:
                        _kill(proc)
                        self._done({"id": current, "died": f"did not finish within {self.timeout:g} s (--timeout)"})
                        done.add(current)
                        current = None
                        break
            finally:
                os.close(r)
                _kill(proc) if proc.poll() is None and not finished else proc.wait()
            if current is not None:
                code = proc.returncode
                how = f"killed by signal {-code}" if code and code < 0 else f"exited with status {code}"
                self._done({"id": current, "died": f"the process judging it {how}"})
                done.add(current)
            remaining = [i for i in remaining if i["id"] not in done]
            if not done and not finished and remaining:
                # the worker died before judging anything: gradaudit's own failure, not a mutant's
                log = Path(self.scratch, f"worker-{k}.log")
                tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
                for i in remaining:
                    self._done({"id": i["id"], "internal_error": f"the mutation worker failed to start: {tail}"})
                break
            if finished:
                for i in remaining:  # the child said it was done: nothing may be left without a result
                    self._done({"id": i["id"], "internal_error": "the worker finished without judging it"})
                break


def _kill(proc) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()


def _chunks(items: list[dict], n: int) -> list[list[dict]]:
    """Items to `n` children: the mutants of one function together (their probe inputs and JAX
    compilations are shared), each child's originals first."""
    groups: dict = {}
    for it in items:
        if it.get("path") is not None or "function" in it:
            groups.setdefault(it.get("function") or it["id"], []).append(it)
    originals = {j: it for it in items if it.get("path") is None and "function" not in it for j in it["judges"]}
    chunks: list[list] = [[] for _ in range(max(n, 1))]
    for g in sorted(groups.values(), key=len, reverse=True):
        min(chunks, key=len).extend(g)
    out = []
    for c in chunks:
        needed = []
        for j in dict.fromkeys(j for it in c for j in it["judges"]):
            if j in originals and originals[j] not in needed:
                needed.append(originals[j])
        out.append(needed + c)
    # originals nobody's mutants need (a function with no mutants) still get checked once
    placed = {id(o) for c in out for o in c}
    for o in originals.values():
        if id(o) not in placed:
            min(out, key=len).insert(0, o)
            placed.add(id(o))
    return out


# ---- one mutation run -------------------------------------------------------------------------

def write_mutants(plan: Plan, folder: Path) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for k, (m, judges, modname) in enumerate(plan.mutants):
        p = folder / f"m{k:04d}_{m.function}_{m.operator}.py"
        p.write_text(m.source, encoding="utf-8")
        items.append({"id": m.id, "function": m.function, "path": str(p), "judges": judges, "module": modname})
    used = {j for _, judges, _ in plan.mutants for j in judges}
    for j, modname in plan.judges.items():
        if j in used:
            items.append({"id": f"original:{j}", "path": None, "judges": [j], "module": modname})
    return items


def run(plan: Plan, *, profile="ci", dtypes=("float64", "float32"), oracles=("torch", "jax", "numeric"),
        examples=None, workers=1, timeout=300.0, explain_profile="dev", extra=(), probe=None, keep=None,
        progress=None, raw=False) -> dict:
    """Judge every mutant of `plan`; returns the report (see `summarize`). `extra`: more judges for
    the child to run on each mutant ("path.py:function", see benchmarks/mutation.py); `raw`: keep
    every child result under "raw"."""
    scratch = tempfile.mkdtemp(prefix="gradaudit-mutate-")
    t0 = time.perf_counter()
    try:
        folder = Path(keep) if keep is not None else Path(scratch) / "mutants"
        items = write_mutants(plan, folder)
        cfg = {"profile": profile, "dtypes": list(dtypes), "oracles": list(oracles), "examples": examples, "seed": None}
        kids = Children(plan, cfg, workers=workers, timeout=timeout, scratch=scratch, extra=extra, probe=probe,
                        progress=progress)
        results = kids.run([it for it in items if it["judges"]])
        report = summarize(plan, items, results, profile)
        survivors = [s["id"] for s in report["survivors"]]
        if survivors and explain_profile not in (None, "none") and explain_profile != profile:
            again = [dict(it, probe=False) for it in items if it["id"] in survivors]
            cfg2 = dict(cfg, profile=explain_profile)
            kids2 = Children(plan, cfg2, workers=workers, timeout=timeout * 4, scratch=scratch, probe=probe)
            second = kids2.run(again)
            for s in report["survivors"]:
                r = second.get(s["id"], {})
                checks = [v.get("check") for v in r.get("judges", {}).values() if v.get("check")]
                killed = [c for c in checks if c.get("killed")]
                s[f"{explain_profile}_profile"] = "killed" if killed else ("survived" if checks else "not run")
                if killed:
                    s[f"{explain_profile}_by"] = killed[0].get("by")
                s["why"] = explain(s, explain_profile)
        report["seconds"] = round(time.perf_counter() - t0, 1)
        if raw:
            report["raw"] = results
        return report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _check_of(res: dict, passing: set) -> dict | None:
    """The first check that killed the mutant, among judges whose original passes; else any check."""
    checks = [(j, v["check"]) for j, v in res.get("judges", {}).items() if "check" in v and j in passing]
    for j, c in checks:
        if c.get("killed"):
            return dict(c, judge=j)
    return dict(checks[0][1], judge=checks[0][0]) if checks else None


def classify(res: dict, judges: list, passing: set) -> tuple[str, str]:
    """(status, reason) of one mutant's result."""
    if res is None:
        return "error", "no result"
    if res.get("internal_error"):
        return "error", res["internal_error"]
    if res.get("died"):
        return "invalid", f"the mutant {res['died']}"
    status = res.get("probe_status", "unprobed")
    if status == "invalid":
        p = next((v["probe"] for v in res["judges"].values() if v.get("probe")), {})
        return "invalid", f"raises or returns the wrong gradients on every input: {p.get('error')}"
    if status == "equivalent":
        return "equivalent", "the same gradient on every probe input"
    if status == "unprobed":
        return "error", "the original backward ran on none of the probe inputs"
    if not any(j in passing for j in judges):
        return "not_scored", "the original already fails the check"
    c = _check_of(res, passing)
    if c is None or c.get("internal_error"):
        return "error", (c or {}).get("internal_error", "not checked")
    return ("killed", (c.get("by") or {}).get("message", "")) if c["killed"] else ("survived", "")


def summarize(plan: Plan, items: list[dict], results: dict, profile: str) -> dict:
    originals = {}
    for it in items:
        if it["path"] is None:
            r = results.get(it["id"], {})
            for j, v in r.get("judges", {}).items():
                originals[j] = v.get("check", {})
    passing = {j for j, c in originals.items() if c and not c.get("killed") and not c.get("internal_error")}
    by_id = {m.id: (m, judges) for m, judges, _ in plan.mutants}
    counts = {"mutants": 0, "killed": 0, "equivalent": 0, "survived": 0, "invalid": 0}
    functions: dict = {}
    operators: dict = {}
    survivors, flagged, errors, not_scored, per_mutant = [], [], [], [], []
    for mid, (m, judges) in by_id.items():
        res = results.get(mid)
        status, reason = classify(res, judges, passing)
        counts["mutants"] += 1
        for table, key in ((functions, m.function), (operators, m.operator)):
            row = table.setdefault(key, {"mutants": 0, "killed": 0, "equivalent": 0, "survived": 0, "invalid": 0})
            row["mutants"] += 1
            if status in row:
                row[status] += 1
        if status in counts:
            counts[status] += 1
        entry = {"id": mid, "function": m.function, "operator": m.operator, "line": m.line,
                 "description": m.description, "status": status, "judges": judges}
        if status == "killed":
            c = _check_of(res, passing)
            entry["by"] = c.get("by")
        per_mutant.append(entry)
        if status == "survived":
            s = dict(entry, diff=m.diff, probe={j: v.get("probe") for j, v in res["judges"].items()},
                     check={j: {k: v["check"].get(k) for k in ("cells", "statuses", "regimes", "examples")}
                            for j, v in res["judges"].items() if "check" in v})
            s["why"] = explain(s, None)
            survivors.append(s)
        elif status == "equivalent":
            c = _check_of(res, passing)
            if c and c.get("killed"):
                flagged.append(dict(entry, diff=m.diff, by=c.get("by")))
        elif status == "error":
            errors.append(dict(entry, reason=reason))
        elif status == "not_scored":
            not_scored.append(entry)
    for row in [*functions.values(), *operators.values(), counts]:
        scored = row["killed"] + row["survived"]
        row["score"] = round(row["killed"] / scored, 4) if scored else None
    return {**counts, "score": counts["score"], "profile": profile, "subject": plan.label, "kind": plan.kind,
            "functions": functions, "operators": operators, "survivors": survivors, "equivalent_flagged": flagged,
            "originals_failing": sorted(set(originals) - passing), "not_scored": not_scored, "errors": errors,
            "results": per_mutant}


def explain(s: dict, explain_profile: str | None) -> str:
    """Why a survivor survived, from where the probe saw it differ and what the checks drew."""
    parts = []
    for j, p in (s.get("probe") or {}).items():
        if not p or p.get("status") != "differs":
            continue
        d_ci, n_ci = p["by_breadth"]["narrow"]
        d_full, n_full = p["by_breadth"]["full"]
        regimes = sorted(r for r, (d, n) in p["by_regime"].items() if d)
        ex = p.get("example") or {}
        where = f" under {j}" if len(s.get("probe") or {}) > 1 else ""
        if p.get("reshaped"):
            parts.append(f"on {p['reshaped']} of {p['ran']} probe inputs{where} it {p['error']}; the check's cs231n "
                         f"adapter reshapes the gradient into the expected layout, so the check never sees the "
                         f"wrong shape")
            continue
        if p["broken"] and not p["differs"] and not p["written"]:
            parts.append(f"raises on {p['broken']} of {p['ran']} probe inputs{where} ({p['error']}) and is right on "
                         f"the others; the check drew none of the inputs where it raises")
            continue
        if p["written"] and not p["differs"]:
            parts.append(f"same gradient{where}, but it writes into the upstream gradient on {p['written']} of "
                         f"{p['ran']} inputs, and the check did not flag the write")
            continue
        if p["max_rel"] < 1e-6 and p["differs"]:
            parts.append(f"differs{where} by at most {p['max_rel']:.1e} (relative), below what a float32 "
                         f"check can resolve")
            continue
        if d_ci == 0:
            parts.append(f"differs{where} only on geometries the ci profile does not draw ({d_full} of {n_full} "
                         f"full-breadth inputs, e.g. {'; '.join(p['geoms_differ'][:3])}); the ci profile draws "
                         f"{'; '.join(p['geoms_narrow'][:4])}")
        else:
            parts.append(f"differs{where} on {d_ci} of {n_ci} probe inputs of the ci geometries (e.g. "
                         f"{ex.get('regime')} regime, {ex.get('geometry')}, grad {','.join(ex.get('grads') or [])} "
                         f"off by {ex.get('rel', 0):.2g} relative), yet every example the check drew passed")
        if regimes and len(regimes) < len(p["by_regime"]):
            parts[-1] += f"; only in the {', '.join(regimes)} regime{'s' if len(regimes) > 1 else ''}"
    if explain_profile:
        got = s.get(f"{explain_profile}_profile")
        if got == "killed":
            by = s.get(f"{explain_profile}_by") or {}
            parts.append(f"a --profile {explain_profile} check kills it ({by.get('regime')} regime, {by.get('dtype')}, "
                         f"shapes {by.get('shapes')})")
        elif got == "survived":
            parts.append(f"a --profile {explain_profile} check does not kill it either")
    return "; ".join(parts) or "the probe saw no difference on its inputs"


# ---- the command ------------------------------------------------------------------------------

def _pct(x):
    return "n/a" if x is None else f"{100 * x:.1f} %"


def render(report: dict) -> str:
    lines = [f"gradaudit mutate {report['subject']} ({report['kind']}, {report['profile']} profile): "
             f"{report['mutants']} mutants — {report['killed']} killed, {report['survived']} survived, "
             f"{report['equivalent']} equivalent, {report['invalid']} invalid; "
             f"score {_pct(report['score'])} ({report['killed']} of {report['killed'] + report['survived']})"]
    for title, table in (("function", report["functions"]), ("operator", report["operators"])):
        width = max([len(title)] + [len(k) for k in table])
        lines.append("")
        lines.append(f"{title:<{width}}  mutants  killed  survived  equivalent  invalid  score")
        for k, r in table.items():
            lines.append(f"{k:<{width}}  {r['mutants']:>7}  {r['killed']:>6}  {r['survived']:>8}  "
                         f"{r['equivalent']:>10}  {r['invalid']:>7}  {_pct(r['score'])}")
    if report["survivors"]:
        lines += ["", f"survivors ({len(report['survivors'])}):"]
        for s in report["survivors"]:
            lines.append(f"  {s['id']} (line {s['line']}): {s['description']}")
            lines += ["    " + ln for ln in s["diff"].rstrip("\n").splitlines()]
            lines.append(f"    why: {s['why']}")
    if report["equivalent_flagged"]:
        lines += ["", "equivalent mutants the check flagged anyway "
                      "(a false alarm, or a difference only float32 shows):"]
        lines += [f"  {e['id']}: {e['description']} — {(e.get('by') or {}).get('message', '')[:200]}"
                  for e in report["equivalent_flagged"]]
    if report["originals_failing"]:
        lines += ["", f"not scored: the check already fails on the original {', '.join(report['originals_failing'])} "
                      f"({len(report['not_scored'])} mutants); fix those first"]
    if report["errors"]:
        lines += ["", f"gradaudit failed on {len(report['errors'])} mutants:"]
        lines += [f"  {e['id']}: {e['reason'][:300]}" for e in report["errors"][:20]]
    lines.append(f"\n{report.get('seconds', 0)} s")
    return "\n".join(lines)


def cmd_mutate(args) -> int:
    """`gradaudit mutate`; a bad argument raises MutateUsageError."""
    if (args.path is None) == (args.ops is None):
        raise MutateUsageError("give a .py file to mutate, or --ops a,b for the catalogue's reference backwards "
                               "(not both)")
    if args.workers < 1:
        raise MutateUsageError(f"--workers must be at least 1, got {args.workers}")
    if not args.timeout > 0:
        raise MutateUsageError(f"--timeout must be positive, got {args.timeout}")
    if args.min_score is not None and not 0 <= args.min_score <= 1:
        raise MutateUsageError(f"--min-score is a fraction in [0, 1], got {args.min_score}")
    if args.examples is not None and args.examples < 1:
        raise MutateUsageError(f"--examples must be at least 1, got {args.examples}")
    operators = _known("mutation operator", args.operators, list(OPERATORS)) if args.operators else None
    import oracles

    _known("oracle", args.oracles, oracles.ORACLES)
    _known("dtype", args.dtypes, ("float64", "float32"))
    if args.ops is not None:
        from properties import catalogue

        known = catalogue.load()
        ops = list(known) if tuple(args.ops) == ("all",) else _known("op", args.ops, list(known))
        plan = plan_ops(ops, args.select, operators)
    else:
        path = Path(args.path)
        if not path.is_file() or path.suffix != ".py":
            raise MutateUsageError(f"{str(path)!r} is not a .py file")
        plan = plan_file(path, args.convention, args.select, operators)
        if not plan.judges:
            what = "cs231n-named functions" if args.convention else "@<derivation>.backward functions"
            hint = "" if args.convention else " (cs231n code? add --convention cs231n)"
            print(f"gradaudit mutate: no {what} in {path}{hint}", file=sys.stderr)
            return EXIT_NOTHING
    if not plan.mutants:
        print(f"gradaudit mutate: no mutants of {plan.label}" + (f" matching -k {args.select}" if args.select else ""),
              file=sys.stderr)
        return EXIT_NOTHING
    tty = sys.stderr.isatty() and not args.json
    total = len(plan.mutants) + len(plan.judges)

    def progress(res, k):
        if tty:
            print(f"\r  {k}/{total} judged", end="", file=sys.stderr, flush=True)

    if not args.json:
        print(f"gradaudit mutate: {len(plan.mutants)} mutants of {plan.label}, {args.workers} worker(s), "
              f"{args.profile} profile", file=sys.stderr)
    report = run(plan, profile=args.profile, dtypes=args.dtypes, oracles=args.oracles, examples=args.examples,
                 workers=args.workers, timeout=args.timeout, explain_profile=args.explain_profile, keep=args.keep,
                 progress=progress)
    if tty:
        print(file=sys.stderr)
    print(json.dumps(report, indent=1) if args.json else render(report))
    if report["errors"]:
        return EXIT_INTERNAL
    if args.min_score is not None and report["score"] is not None and report["score"] < args.min_score:
        return EXIT_LOW
    return EXIT_OK
