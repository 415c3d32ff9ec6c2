"""`gradaudit audit PATH`: check a user's own derivations, and `gradaudit.check(...)` from a test.

Two dialects, one report:

- `--convention cs231n`: every function of the file named as in the cs231n assignments is adapted to
  its catalogue op (gradaudit/cs231n.py) and judged by the catalogue's strategies and oracles;
- otherwise the file's `@gradaudit.derivation`s are (gradaudit/derivation.py); PATH may then be a
  folder of such files.

The user's code is not trusted to behave. The CLI never runs it in its own process: a child
(`python -m gradaudit._audit_worker`) imports the file and checks the functions one after the
other, writing a record per cell to results.jsonl as it goes and telling the parent, over a pipe,
which user function it is calling. The parent ends a call that outlives `--timeout`, notices a child
that exited or crashed, writes an `error` for each cell the child could not finish, and starts a
fresh child for the functions still to check. Output of the user's code is counted and discarded.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._guard import Guard, UserCodeError, clean

__all__ = ["AuditSink", "Job", "Modules", "build", "check", "derivation_files", "derivations_in", "drive_child",
           "error_record", "import_file", "plan_file", "plan_isolated", "polish", "qualified", "run_isolated",
           "run_job", "session_jobs", "skip_record", "target_for"]

WORKER = "gradaudit._audit_worker"


# ---- the user's file --------------------------------------------------------------------------

def import_file(path: Path):
    """Import a user's .py file as a fresh module (its folder goes at the END of sys.path, so its
    sibling imports work without shadowing anything gradaudit needs). A file inside a package
    (`cs231n/classifiers/fc_net.py` with `from ..layers import *` or `from cs231n.layers import *`)
    is imported by its dotted name, with the folder above the package at the end of sys.path."""
    path = Path(path).resolve()
    dotted = _package_name(path)
    if dotted is not None:
        module = importlib.import_module(dotted)
        if Path(getattr(module, "__file__", "") or "").resolve() == path:
            return module  # (else an installed package of that name came first: import the file itself)
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    name = f"_gradaudit_user_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.append(folder)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} (not a Python source file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _package_name(path: Path) -> str | None:
    """`a.b.c` for .../root/a/b/c.py when a/ and a/b/ are packages (have an __init__.py) and root/ is
    not; root goes at the end of sys.path. None for a file outside any package."""
    parts, folder = [path.stem], path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    if len(parts) == 1 or not all(p.isidentifier() for p in parts):
        return None
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    return ".".join(parts)


def derivation_files(path: Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.glob("*.py") if not p.name.startswith("_"))
    return [path]


def derivations_in(module) -> list:
    from .derivation import Derivation

    seen, out = set(), []
    for v in vars(module).values():
        if isinstance(v, Derivation) and id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def _subject_jobs(module, path: str, folder: bool) -> list[Job]:
    """The module's `gradaudit.function` subjects, one job each (its checks are its targets)."""
    from .function import subjects_in

    jobs, seen = [], set()
    for s in subjects_in(module):
        if s.name in seen:
            raise ValueError(f"two gradaudit.function subjects are named {s.name!r} in {Path(path).name}: "
                             f"give one of them name=")
        seen.add(s.name)
        jobs.append(Job(qualified(path, s.name, folder), qualified(path, s.name, folder), "function", path, s.name,
                        list(s.regimes), s.name, source=s.source or Path(path).name, checks=len(s.checks)))
    return jobs


def qualified(path: Path, name: str, folder: bool) -> str:
    return f"{Path(path).stem}.{name}" if folder else name


# ---- one target, whichever process runs it ----------------------------------------------------

@dataclasses.dataclass
class Job:
    """One function (cs231n pair) or derivation to check: what the plan lists and a worker runs."""

    target: str  # the record's `target`
    op: str
    convention: str  # "cs231n" | "derivation"
    file: str  # absolute path of the user's file
    name: str  # cs231n: the pair's target function; derivation: the derivation's name in its module
    regimes: list
    forward: str | None = None  # the forward function's name, for messages
    source: str = ""
    skip: str | None = None  # why it is not checked (a skip record instead)
    formula: str = ""  # a derivation's formula as written in the notes
    checks: int = 1  # a gradaudit.function subject: its checks, each a target of its own (the progress count)

    def cells(self, cfg) -> list[dict]:
        from reports.records import cell_id

        return [{"id": cell_id(target=self.target, op=self.op, oracle=o, device=d, dtype=dtype, regime=regime),
                 "oracle": o, "device": d, "dtype": dtype, "regime": regime}
                for dtype in cfg.dtypes for regime in self.regimes for o, d in cfg.sides()]


def plan_file(path: Path, convention: str | None, guard: Guard, *, folder: bool = False) -> dict:
    """What there is to check in one file: {"jobs": [...], "absent": [...]}. Imports the file."""
    module = guard.call(import_file, f"import {Path(path).name}", (path,))
    path = str(Path(path).resolve())
    if convention == "cs231n":
        from . import cs231n
        from properties import catalogue

        run, skipped, absent = cs231n.plan(set(cs231n.functions_in(module)))
        jobs = [Job(p.target, p.op, "cs231n", path, p.target, list(catalogue.load()[p.op].regimes), p.forward,
                    source=Path(path).name) for p in run]
        for target, why in skipped:
            op = cs231n.BY_TARGET[target].op if target in cs231n.BY_TARGET else target.replace("_backward", "")
            jobs.append(Job(target, op, "cs231n", path, target, ["-"], skip=why, source=Path(path).name))
        jobs += _model_jobs(module, path, guard)
        return {"jobs": [dataclasses.asdict(j) for j in jobs], "absent": absent}
    jobs = _subject_jobs(module, path, folder)
    hint = None
    if not derivations_in(module) and not jobs:
        from . import cs231n, models

        if cs231n.plan(set(cs231n.functions_in(module)))[0] or models.models_in(module):
            hint = f"{Path(path).name} has cs231n-named functions or classes: audit them with --convention cs231n"
    for d in derivations_in(module):
        target = qualified(path, d.target_name, folder)
        op = qualified(path, d.name, folder)
        skip = None if d.backward_fn is not None else f"{d.name} has no backward (decorate one with @{d.name}.backward)"
        jobs.append(Job(target, op, "derivation", path, d.name, list(d.regimes), d.name,
                        source=d.source or Path(path).name, skip=skip, formula=d.formula))
    return {"jobs": [dataclasses.asdict(j) for j in jobs], "absent": [], "hint": hint}


def _model_jobs(module, path: str, guard: Guard) -> list[Job]:
    """The cs231n model classes of the module (gradaudit/models.py), one job per configuration."""
    from . import models

    return [Job(**j, convention="cs231n", file=path, source=Path(path).name) for j in models.plan(module, guard)]


class Modules:
    """User modules imported by this process, by path (each imported once), and derivations handed
    over directly (gradaudit.check(some_derivation))."""

    def __init__(self, guard: Guard):
        self.guard, self.modules, self.objects = guard, {}, {}

    def get(self, path: str):
        if path not in self.modules:
            self.modules[path] = self.guard.call(import_file, f"import {Path(path).name}", (path,))
        return self.modules[path]

    def derivation(self, path: str, name: str):
        if (path, name) in self.objects:
            return self.objects[(path, name)]
        d = next((d for d in derivations_in(self.get(path)) if d.name == name), None)
        if d is None:
            raise LookupError(f"no derivation {name!r} in {path}")
        return d

    def subject(self, path: str, name: str):
        from .function import subjects_in

        if (path, name) in self.objects:
            return self.objects[(path, name)]
        s = next((s for s in subjects_in(self.get(path)) if s.name == name), None)
        if s is None:
            raise LookupError(f"no gradaudit.function subject {name!r} in {path}")
        return s


def build(job: Job, modules: Modules, guard: Guard, notes: dict):
    """(spec, target, inputs factory, regimes) for a job, with the user's functions guarded."""
    if job.convention == "cs231n":
        from . import cs231n
        from properties import catalogue

        module = modules.get(job.file)
        if job.name not in cs231n.BY_TARGET:  # a model class
            from . import models

            return models.build(job.name, module, guard, notes)
        functions = cs231n.functions_in(module)
        pair = cs231n.resolve(cs231n.BY_TARGET[job.name], set(functions))
        fns = {n: guard.wrap(f, n) for n, f in functions.items() if n in pair.functions}
        target, inputs = cs231n.build_target(pair, fns, notes)
        # a forward mismatch is named after the user's forward (a loss function is its own)
        target = dataclasses.replace(target, forward_name=job.forward or job.target)
        return catalogue.load()[pair.op], target, inputs, tuple(job.regimes)
    d = modules.derivation(job.file, job.name)
    target = d.target(job.target, wrap=guard.wrap)
    target = dataclasses.replace(target, op=job.op, forward_name=job.target)
    return d.spec(), target, d.inputs, tuple(d.regimes)


class AuditSink:
    """Between the runner and results.jsonl: makes every message safe to print (user text escaped
    and cut), and adds the notes of the target and where it comes from. (The verdicts already name
    the user's functions: the Target carries their names.)"""

    def __init__(self, inner, job: Job, notes: dict, emit=None):
        self.inner, self.job, self.notes, self.emit = inner, job, notes, emit

    def write(self, rec: dict) -> None:
        rec = polish(rec, self.job, self.notes.get(self.job.target))
        self.inner.write(rec)
        if self.emit:
            self.emit("J " + json.dumps(rec, default=str))


def polish(rec: dict, job: Job, note: str | None = None) -> dict:
    rec = dict(rec)
    msg = str(rec.get("message") or "")
    if note and rec.get("status") in ("fail", "error"):
        msg = f"{msg} — {note}"
    rec["message"] = clean(msg, 2000)
    if rec.get("kink"):
        rec["kink"] = clean(rec["kink"], 500)
    rec["source"] = job.source or rec.get("source")
    rec["audited"] = Path(job.file).name
    if job.formula:
        rec["formula"] = job.formula
    return rec


def run_job(job: Job, cfg, sink, modules: Modules, guard: Guard, emit=None, done=()) -> list[dict]:
    """Check one job in this process; records go through AuditSink into `sink`. `done`: ids of cells
    already recorded (a resumed run)."""
    from properties.runner import run_target_cells

    notes: dict = {}
    out = AuditSink(sink, job, notes, emit)
    if job.skip:
        rec = skip_record(job, cfg, job.skip)
        out.write(rec)
        return [polish(rec, job)]
    if job.convention == "function":
        return _run_subject_job(job, cfg, out, modules, done)
    try:
        spec, target, inputs, regimes = build(job, modules, guard, notes)
    except Exception as e:  # the import or the derivation itself is broken: every cell errors
        why = str(e) if isinstance(e, UserCodeError) else f"{type(e).__name__}: {e}"
        recs = [error_record(job, c, f"{job.target} could not be set up: {why}") for c in job.cells(cfg)]
        for r in recs:
            out.write(r)
        return [polish(r, job) for r in recs]
    collected = []

    class _Collect:
        def write(self, rec):
            out.write(rec)
            collected.append(polish(rec, job, notes.get(job.target)))

    extra = {"audit_path": job.file, "convention": job.convention, "audit_name": job.name, "audit_op": job.op}
    run_target_cells(spec, target, inputs, regimes, cfg, _Collect(), done=done, family=job.convention,
                     source=job.source, case_meta=extra)
    return collected


def _run_subject_job(job: Job, cfg, out, modules: Modules, done=()) -> list[dict]:
    """A `gradaudit.function` subject: every one of its checks (gradaudit/_subject_run.py)."""
    from ._subject_run import run_subject

    collected = []

    class _Collect:
        def write(self, rec):
            out.write(rec)
            collected.append(polish(rec, job))

    try:
        subject = modules.subject(job.file, job.name)
    except Exception as e:
        why = str(e) if isinstance(e, UserCodeError) else f"{type(e).__name__}: {e}"
        recs = [error_record(job, c, f"{job.target} could not be set up: {why}") for c in job.cells(cfg)]
        for r in recs:
            out.write(r)
        return [polish(r, job) for r in recs]
    extra = {"audit_path": job.file, "convention": job.convention, "audit_name": job.name, "audit_op": job.op}
    run_subject(subject, cfg, _Collect(), done=done, case_meta=extra, family="function", source=job.source)
    return collected


# ---- records the parent writes itself ---------------------------------------------------------

def _record(job: Job, cell: dict, status: str, message: str) -> dict:
    from reports.records import new_record

    return new_record(target=job.target, op=job.op, oracle=cell["oracle"], device=cell["device"],
                      dtype=cell["dtype"], regime=cell["regime"], status=status, message=message, id=cell["id"],
                      family=job.convention, source=job.source, device_name=cell["device"], seconds=0.0,
                      audited=Path(job.file).name)


def error_record(job: Job, cell: dict, message: str) -> dict:
    rec = _record(job, cell, "error", clean(message, 2000))
    rec["blame"] = "reference"
    return rec


def skip_record(job: Job, cfg, message: str) -> dict:
    o, d = cfg.sides()[0]
    cell = {"id": f"{job.target}-{o}-{d}-{cfg.dtypes[0]}-not-checked", "oracle": o, "device": d,
            "dtype": cfg.dtypes[0], "regime": "-"}
    return _record(job, cell, "skip", clean(message, 2000))


# ---- the parent: children, timeouts, crashes ---------------------------------------------------

def _signal_name(code: int) -> str:
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"
    return {"SIGSEGV": "SIGSEGV (segmentation fault)", "SIGKILL": "SIGKILL (killed)",
            "SIGABRT": "SIGABRT (abort)", "SIGBUS": "SIGBUS (bus error)"}.get(name, name)


@dataclasses.dataclass
class ChildOutcome:
    records: list
    done: set  # targets finished
    finished: bool  # the child reported that it had done everything
    current: str | None = None  # the target it was on when it stopped
    cells_written: set = dataclasses.field(default_factory=set)
    death: str | None = None  # why it stopped early
    plan: dict | None = None
    fatal: str | None = None  # an error inside the worker itself


def _child_env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def drive_child(job: dict, timeout: float, *, verbose: bool = False, on_target_done=None) -> ChildOutcome:
    """Run one worker process on `job` (see _audit_worker) and follow it to its end."""
    r, w = os.pipe()
    job = dict(job, ctl_fd=w)
    proc = subprocess.Popen([sys.executable, "-m", WORKER], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, pass_fds=(w,), env=_child_env(), start_new_session=True)
    os.close(w)
    try:
        proc.stdin.write(json.dumps(job).encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass
    outcome = ChildOutcome(records=[], done=set(), finished=False)
    buf, err_head = b"", b""
    in_call, call_t0 = None, 0.0
    last_event = time.monotonic()
    silence_limit = max(10 * timeout, 600.0)
    fds = {r: "ctl", proc.stderr.fileno(): "err"}
    try:
        while fds:
            ready, _, _ = select.select(list(fds), [], [], 0.1)
            for fd in ready:
                data = os.read(fd, 1 << 16)
                if not data:
                    del fds[fd]
                    continue
                if fds[fd] == "err":
                    err_head = (err_head + data)[:8192]
                    continue
                last_event = time.monotonic()
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    kind, _, rest = line.decode("utf-8", "replace").partition(" ")
                    if kind == "C":
                        in_call, call_t0 = rest, time.monotonic()
                    elif kind == "R":
                        in_call = None
                    elif kind == "T":
                        outcome.current = rest
                        outcome.cells_written = set()
                    elif kind == "J":
                        rec = json.loads(rest)
                        outcome.records.append(rec)
                        outcome.cells_written.add(rec.get("id"))
                    elif kind == "E":
                        outcome.done.add(rest)
                        if on_target_done:
                            on_target_done(rest, [x for x in outcome.records if x.get("target") == rest])
                        outcome.current = None
                    elif kind == "X" and verbose:
                        tb = json.loads(rest)
                        print(f"--- traceback from {clean(tb['function'])} ---\n{tb['traceback']}", file=sys.stderr)
                    elif kind == "P":
                        outcome.plan = json.loads(rest)
                    elif kind == "F":
                        outcome.fatal = json.loads(rest)
                    elif kind == "D":
                        outcome.finished = True
            now = time.monotonic()
            if in_call is not None and now - call_t0 > timeout:
                _kill(proc)
                outcome.death = (f"{in_call} did not return within {timeout:g} s (--timeout {timeout:g}); "
                                 f"the check was stopped")
                in_call = None
            elif now - last_event > silence_limit and proc.poll() is None:
                _kill(proc)
                outcome.death = f"the worker went silent for {silence_limit:g} s outside the audited code; stopped"
        code = proc.wait()
    except BaseException:
        _kill(proc)
        raise
    finally:
        os.close(r)
        proc.stderr.close()
    if not outcome.finished and outcome.death is None:
        how = (f"it was killed by {_signal_name(code)} (a crash in native code?)" if code < 0
               else f"it exited with status {code} (os._exit?)")
        if in_call is not None:
            outcome.death = f"the process died during a call to {in_call}: {how}"
        elif outcome.fatal:
            outcome.death = f"gradaudit's worker failed: {outcome.fatal.get('error')}"
        else:
            tail = clean(err_head.decode("utf-8", "replace")[-600:])
            outcome.death = f"gradaudit's worker stopped ({how}) outside the audited code{': ' + tail if tail else ''}"
    return outcome


def _kill(proc) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the child and anything it started
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()


def run_isolated(jobs: list[dict], sink, cfg, *, timeout: float, verbose: bool, progress: bool,
                 recorded=()) -> list[dict]:
    """Check `jobs` in child processes, a fresh one after each death; every cell gets a record.
    `recorded`: ids of cells already recorded (a resumed run)."""
    records: list[dict] = []
    remaining = [Job(**j) for j in jobs]

    def done(target, recs):
        if progress:
            bad = sum(r["status"] in ("fail", "error") for r in recs)
            n = sum(r.get("examples") or 0 for r in recs)
            print(f"  {target:<34} {len(recs):>3} cells {n:>5} examples{'  ' + str(bad) + ' FAILING' if bad else ''}",
                  file=sys.stderr)

    while remaining:
        job = {"mode": "run", "jobs": [dataclasses.asdict(j) for j in remaining], "cfg": cfg.to_json(),
               "done": sorted(recorded), "results": str(Path(cfg.report_dir) / "results.jsonl"),
               "verbose": verbose}
        out = drive_child(job, timeout, verbose=verbose, on_target_done=done)
        records.extend(out.records)
        remaining = [j for j in remaining if j.target not in out.done]
        if out.finished or not remaining:
            break
        current = next((j for j in remaining if j.target == out.current), None)
        if current is None:  # it died before starting a target: the import, or the worker itself
            victims, message = remaining, out.death
        else:
            victims, message = [current], out.death
        for j in victims:
            recs = [error_record(j, c, f"{j.target}: {message}" if not message.startswith(j.target) else message)
                    for c in j.cells(cfg) if c["id"] not in out.cells_written and c["id"] not in recorded]
            if j.skip:
                recs = []
            for rec in recs:
                sink.write(rec)
            records.extend(recs)
            done(j.target, [r for r in records if r["target"] == j.target])
        remaining = [j for j in remaining if j not in victims]
    return records


def _isolated_job(jobs, timeout, verbose, progress, sink, cfg, done=()):
    return run_isolated(jobs, sink, cfg, timeout=timeout, verbose=verbose, progress=progress, recorded=done)


def plan_isolated(path: Path, convention: str | None, timeout: float, verbose: bool):
    """(jobs, absent pairs, error, hint) from a child that imports the file(s)."""
    out = drive_child({"mode": "plan", "path": str(path), "convention": convention, "verbose": verbose},
                      timeout, verbose=verbose)
    if out.plan is None:
        return [], [], out.death or "the file could not be read", None
    return out.plan["jobs"], out.plan["absent"], out.plan.get("error"), out.plan.get("hint")


def session_jobs(path: Path, convention: str | None, jobs: list[dict], error: str | None, *, timeout: float,
                 verbose: bool, workers: int = 1, sharded: bool = False, progress: bool = False) -> list:
    """The audit as session jobs (properties.session): the planned functions in children, one chunk
    per worker (one function per job when the run is sharded); an import error as one error cell."""
    out = []
    if error:
        bad = Job(path.name, "(import)", convention or "derivation", str(path.resolve()), path.name, ["-"],
                  source=path.name)
        out.append((f"import {path.name}", functools.partial(_error_job, bad, error)))
    if jobs:
        if sharded or workers > 1:
            chunks = [[j] for j in jobs] if sharded else [jobs[i::workers] for i in range(workers)]
        else:
            chunks = [jobs]
        for chunk in chunks:
            if not chunk:
                continue
            label = chunk[0]["target"] if len(chunk) == 1 else f"{path.name} ({len(chunk)} functions)"
            out.append((label, functools.partial(_isolated_job, chunk, timeout, verbose, progress and workers == 1)))
    return out


def _error_job(job: Job, message: str, sink, cfg, done=()) -> list[dict]:
    o, d = cfg.sides()[0]
    rec = error_record(job, {"id": f"{job.target}-import", "oracle": o, "device": d, "dtype": cfg.dtypes[0],
                             "regime": "-"}, message)
    sink.write(rec)
    return [rec]


# ---- replay -----------------------------------------------------------------------------------

def target_for(meta: dict):
    """The Target of an audit counterexample (`gradaudit replay`): re-imports the user's file in this
    process (replay is an explicit request to run that code again)."""
    path = meta["audit_path"]
    if not Path(path).is_file():
        raise FileNotFoundError(f"the audited file {path!r} is gone; replay needs it")
    guard = Guard()
    job = Job(meta["target"], meta.get("audit_op") or meta["op"], meta["convention"], path,
              meta.get("audit_name") or meta["target"], [meta.get("regime", "typical")])
    if job.convention == "function":
        from ._subject import subject_target

        subject = Modules(guard).subject(path, job.name)
        return subject_target(subject, meta["function_check"], meta.get("function_device", "cpu"))
    _, target, _, _ = build(job, Modules(guard), guard, {})
    return target


# ---- from a test ------------------------------------------------------------------------------

def check(*things, convention: str | None = None, oracles=("torch", "jax", "numeric"), dtypes=("float64",),
          profile: str = "ci", examples: int | None = None, seed: int | None = None, report=None,
          raise_on_failure: bool = True, devices=("cpu",)) -> list[dict]:
    """Check derivations (or a cs231n-style module) from inside any test, in this process.

    things: `@gradaudit.derivation` objects, modules, or paths of .py files (or folders of them).
    Returns the records (docs/result_record.md); raises AssertionError listing the failures when a
    cell fails or errors (unless raise_on_failure=False). Counterexamples go to `report` (a folder;
    default a temporary one). For code that may hang or crash, use `gradaudit audit` instead: it
    runs the code in a child process with a timeout.
    """
    from properties.config import RunConfig
    from properties.session import apply_precision
    from reports.records import RecordSink

    from .derivation import Derivation
    from .function import FunctionSubject

    report_dir = Path(report) if report is not None else Path(tempfile.mkdtemp(prefix="gradaudit-check-"))
    cfg = RunConfig(oracles=tuple(oracles), dtypes=tuple(dtypes), profile=profile, examples=examples, seed=seed,
                    report_dir=report_dir, devices=tuple(devices))
    apply_precision(cfg)
    guard = Guard()
    modules = Modules(guard)
    jobs: list[Job] = []
    for thing in things:
        if isinstance(thing, Derivation):
            file = getattr(sys.modules.get(thing.fn.__module__), "__file__", None) or "<memory>"
            modules.objects[(file, thing.name)] = thing
            jobs.append(Job(thing.target_name, thing.name, "derivation", file, thing.name, list(thing.regimes),
                            thing.name, source=thing.source or thing.name, formula=thing.formula,
                            skip=None if thing.backward_fn else f"{thing.name} has no backward"))
            continue
        if isinstance(thing, FunctionSubject):
            file = _defined_in(thing.fn)
            modules.objects[(file, thing.name)] = thing
            jobs.append(Job(thing.name, thing.name, "function", file, thing.name, list(thing.regimes), thing.name,
                            source=thing.source or thing.name))
            continue
        if isinstance(thing, (str, os.PathLike)):
            paths = derivation_files(Path(thing)) if convention is None else [Path(thing)]
            folder = Path(thing).is_dir()
            for p in paths:
                jobs.extend(Job(**j) for j in plan_file(p, convention, guard, folder=folder)["jobs"])
            continue
        # a module object
        file = str(Path(thing.__file__).resolve())
        modules.modules[file] = thing
        jobs.extend(Job(**j) for j in _plan_module(thing, file, convention))
    sink = RecordSink(report_dir / "results.jsonl")
    records = []
    try:
        for job in jobs:
            records.extend(run_job(job, cfg, sink, modules, guard))
    finally:
        sink.close()
    bad = [r for r in records if r["status"] in ("fail", "error")]
    if bad and raise_on_failure:
        raise AssertionError(f"gradaudit: {len(bad)} of {len(records)} cells failed:\n" + "\n".join(
            f"  {r['id']}: {r['status']}" + (f" ({r['kind']}, blame={r['blame']}" + (f", pattern={r['pattern']}" if r.get('pattern') else "") + ")" if r['status'] == 'fail' else "")
            + f": {r['message']}" + (f" [{r['replay']} --report {report_dir}]" if r.get("replay") else "")
            for r in bad))
    return records


def _defined_in(fn) -> str:
    """The file a function (or a Function class, or a custom_vjp's fun) comes from, for replay."""
    for obj in (fn, getattr(fn, "__self__", None), getattr(fn, "fun", None)):
        mod = sys.modules.get(getattr(obj, "__module__", None) or "")
        if getattr(mod, "__file__", None):
            return mod.__file__
    return "<memory>"


def _plan_module(module, file: str, convention: str | None) -> list[dict]:
    from . import cs231n

    if convention == "cs231n":
        from properties import catalogue

        run, skipped, _ = cs231n.plan(set(cs231n.functions_in(module)))
        jobs = [Job(p.target, p.op, "cs231n", file, p.target, list(catalogue.load()[p.op].regimes), p.forward,
                    source=Path(file).name) for p in run]
        jobs += [Job(t, cs231n.BY_TARGET[t].op if t in cs231n.BY_TARGET else t, "cs231n", file, t, ["-"],
                     skip=why, source=Path(file).name) for t, why in skipped]
        jobs += _model_jobs(module, file, Guard())
        return [dataclasses.asdict(j) for j in jobs]
    return [dataclasses.asdict(Job(d.target_name, d.name, "derivation", file, d.name, list(d.regimes), d.name,
                                   source=d.source or Path(file).name, formula=d.formula,
                                   skip=None if d.backward_fn else f"{d.name} has no backward"))
            for d in derivations_in(module)] + _subject_jobs(module, file, False)
