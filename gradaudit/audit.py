"""`gradaudit audit PATH`: check a user's own derivations (`gradaudit.check(...)`, in gradaudit/api.py,
checks them in the caller's process with the pieces here: `plan`, `InProcess`, `check_job`).

Two dialects, one report:

- `--convention cs231n`: every function of the file named as in the cs231n assignments is adapted to
  its catalogue op (gradaudit/cs231n.py) and judged by the catalogue's strategies and oracles;
- otherwise the file's `@gradaudit.derivation`s are (gradaudit/derivation.py).

PATH may be a .py file, a notebook or notes (gradaudit/sources.py: their code cells or fenced Python
blocks, as one module's text), or a folder of these; in a folder, targets are file.function.

User code computes, the harness judges. The CLI never runs audited code in its own process: a
confined child (gradaudit/_child.py, gradaudit/_sandbox.py) imports the sources once and runs the
user's functions on the inputs this process sends; this process (or each `--workers` process) draws
the cases, runs the oracles, compares, blames and writes every record (gradaudit/_remote.py, and
docs/security.md for what the child can and cannot do). A call that hangs past `--timeout`, a child
that crashes, exits or breaks the protocol ends its target with an `error` naming the function, and
a fresh child serves the next one.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import shutil
from pathlib import Path

from . import sources as documents
from ._child import derivations_in
from ._guard import Guard, UserCodeError, clean
from ._lanes import default_children, more_children, run_lanes
from ._proxy import InChild, located_functions
from ._remote import Child, ChildLost, ChildStartError, Source
from ._sandbox import Confinement, child_jax_cache, parse_size
from .console import handled_signals
from .function import FunctionSubject, built_subject, described, subject_jobs

__all__ = ["Audit", "ChildStartError", "InProcess", "Job", "build", "check_job", "confinement", "default_children",
           "derivation_files", "derivations_in", "error_record", "import_file", "plan", "polish", "qualified", "source_text", "sources_of"]


# ---- the user's files ---------------------------------------------------------------------------

def source_text(path: Path) -> bytes:
    """The Python source of an audited file, as the judge reads it (the child is sent this text and
    compiles it under `path`, so tracebacks and inspect point into it). A notebook's code cells or the
    Python blocks of notes become one module's text here (gradaudit/sources.py, which from then on
    names "cell 6, line 3" for a line of it); sources.DocumentError when the document cannot be read."""
    if Path(path).suffix.lower() in documents.SUFFIXES:
        return documents.text(path)[1].encode()
    return Path(path).read_bytes()


def module_name(path: Path) -> str:
    """`a.b.c` for .../a/b/c.py inside packages (a/ and a/b/ have an __init__.py): its relative and
    absolute sibling imports work (the child puts the folder above `a` at the end of sys.path); else
    a name of its own."""
    path = Path(path).resolve()
    parts, folder = [path.stem], path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    if len(parts) > 1 and all(p.isidentifier() for p in parts):
        return ".".join(parts)
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return f"_gradaudit_user_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"


def import_file(path: Path):
    """Import a user's file in this process (gradaudit.check only), as the child does; a notebook's
    cells run one by one (a cell that raises is a message of `__gradaudit_document__`, and the next
    one runs, as in a notebook)."""
    from ._child import exec_source

    path = Path(path).resolve()
    if path.suffix.lower() in documents.SUFFIXES:
        return documents.load(path, module_name(path))
    return exec_source(module_name(path), str(path), source_text(path))


def derivation_files(path: Path) -> list[Path]:
    """The files a path names: itself, or a folder's .py files, notebooks and notes."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(("_", "."))
                      and p.suffix.lower() in (".py", *documents.SUFFIXES))
    return [path]


def sources_of(path: Path, convention: str | None = None) -> list[Source]:
    return [Source(f"m{i}", str(f.resolve()), source_text(f), module_name(f))
            for i, f in enumerate(derivation_files(path))]


# ---- what there is to check -----------------------------------------------------------------------

@dataclasses.dataclass
class Job:
    """One function (cs231n pair) or derivation to check."""

    target: str  # the record's `target`
    op: str
    convention: str  # "cs231n" | "derivation"
    file: str  # absolute path of the user's file
    key: str  # the source's key in the child (or in this process, for check)
    name: str  # cs231n: the pair's target function; derivation: the derivation's name in its module
    regimes: list
    forward: str | None = None  # the forward function's name, for messages
    source: str = ""
    skip: str | None = None  # why it is not checked (a skip record instead)
    formula: str = ""  # a derivation's formula as written in the notes
    checks: tuple = ()  # a gradaudit.function subject's: one target per check (<name>.<check>)
    dtypes: tuple | None = None  # a subject's own dtypes (None: the run's)

    def cells(self, cfg) -> list[dict]:
        from reports.records import cell_id

        if self.checks:  # as gradaudit/_subject_run.py names a subject's cells
            targets = [(f"{self.name}.{c}" + ("" if d == "cpu" else f"@{d}"), self.name, o, d)
                       for c in self.checks for o, d in cfg.sides()]
        else:
            targets = [(self.target, self.op, o, d) for o, d in cfg.sides()]
        return [{"id": cell_id(target=t, op=op, oracle=o, device=d, dtype=dtype, regime=regime), "target": t,
                 "oracle": o, "device": d, "dtype": dtype, "regime": regime}
                for dtype in self.dtypes or cfg.dtypes for regime in self.regimes for t, op, o, d in targets]


def qualified(path: str, name: str, folder: bool) -> str:
    return f"{Path(path).stem}.{name}" if folder else name


def plan(desc: dict, path: str, key: str, convention: str | None, *, folder: bool = False,
         functions: dict | None = None, in_process: bool = True):
    """(jobs, absent cs231n pairs, hint) for one source, from its description (gradaudit/_child.py).
    `functions`: the cs231n functions (or stubs that inspect finds), for a backward given without its
    forward, checked when its cache can be built from how it unpacks it (gradaudit/cache_inference.py).
    `in_process`: the description is this process's own (gradaudit.check), not the audit child's word."""
    from . import cs231n

    names = {n for n in desc.get("functions") or () if isinstance(n, str)}
    base = Path(path).name
    if convention == "cs231n":
        from properties import catalogue

        run, skipped, absent = cs231n.plan(names, functions)
        jobs = [Job(qualified(path, p.target, folder), p.op, "cs231n", path, key, p.target,
                    list(catalogue.load()[p.op].regimes), p.forward, source=base) for p in run]
        for target, why in skipped:
            op = cs231n.BY_TARGET[target].op if target in cs231n.BY_TARGET else target.replace("_backward", "")
            jobs.append(Job(qualified(path, target, folder), op, "cs231n", path, key, target, ["-"], skip=why,
                            source=base))
        from .models import CLASSES

        for m in desc.get("models") or ():  # the child's word: only the classes gradaudit knows
            if type(m) is dict and isinstance(m.get("target"), str) and m["target"].split(".")[0] in CLASSES:
                skip = clean(m["skip"], 2000) if isinstance(m.get("skip"), str) else None
                jobs.append(Job(qualified(path, m["target"], folder), str(m.get("op")), "cs231n", path, key, m["target"], ["typical"],
                                f"{m['target'].split('.')[0]}.loss", source=base, skip=skip))
        return jobs, absent, None
    derivations = [d for d in desc.get("derivations") or () if isinstance(d.get("name"), str) and d["name"].isidentifier()]
    hint = None
    if not derivations and (cs231n.plan(names)[0] or desc.get("models")):
        hint = f"{base} has cs231n-named functions or classes: audit them with --convention cs231n"
    jobs = []
    backwards = [d.get("backward") for d in derivations]
    for d in derivations:
        name, bwd = d["name"], d.get("backward") if isinstance(d.get("backward"), str) else None
        # a factory's twins share a backward's name: then each is named by its handle
        target = bwd if bwd is not None and backwards.count(bwd) == 1 else f"{name}_backward"
        regimes = [r for r in d.get("regimes") or ("typical",) if isinstance(r, str)]
        jobs.append(Job(qualified(path, target, folder), qualified(path, name, folder),
                        "derivation", path, key, name, regimes, name,
                        source=clean(d.get("source") or "", 500) or base, formula=clean(d.get("formula") or "", 2000),
                        skip=None if bwd else f"{name} has no backward (decorate one with @{name}.backward)"))
    jobs += subject_jobs(desc, path, key, Job, functools.partial(qualified, path, folder=folder), runnable=in_process)
    return jobs, [], hint


# ---- where the user's functions run -----------------------------------------------------------------

class InProcess:
    """The user's modules and derivations in this process, every call guarded (gradaudit.check)."""

    def __init__(self, guard: Guard):
        self.guard, self.modules, self.objects, self.described = guard, {}, {}, {}

    def describe(self, key: str) -> dict:
        from ._child import describe_derivation, describe_module

        if key in self.objects:  # a derivation or a gradaudit.function subject
            return described(self.objects[key], describe_derivation)
        if key not in self.described:
            self.described[key] = describe_module(self.modules[key], self.guard)
        return self.described[key]

    def model(self, job: Job, notes: dict):
        from . import models

        spec, target, inputs, regimes = models.build(job.name, self.modules[job.key], self.guard, notes)
        return spec, dataclasses.replace(target, name=job.target), inputs, regimes  # file.Class in a folder

    def functions(self, key: str, pair) -> dict:
        from . import cs231n

        fns = cs231n.functions_in(self.modules[key])
        return {n: self.guard.wrap(fns[n], n) for n in pair.functions if n in fns}  # (optional ones may be absent)

    def derivation_target(self, key: str, job: Job):
        from ._child import named_derivations

        d = self.objects.get(key) or next((d for h, d in named_derivations(self.modules[key]) if h == job.name), None)
        if d is None:
            raise LookupError(f"no derivation {job.name!r} in {job.file}")
        return d, dataclasses.replace(d.target(job.target, wrap=self.guard.wrap), op=job.op, forward_name=job.target)

    def settle(self, job: Job) -> None:
        pass


def build(job: Job, code, notes: dict):
    """(spec, target, inputs factory, regimes) of a job, its user functions wherever `code` runs them."""
    if job.convention == "cs231n":
        from . import cs231n
        from properties import catalogue

        if job.name not in cs231n.BY_TARGET:  # a model class
            return code.model(job, notes)
        pair = cs231n.resolve(cs231n.BY_TARGET[job.name], set(code.describe(job.key).get("functions") or ()))
        target, inputs = cs231n.build_target(pair, code.functions(job.key, pair), notes)
        # a forward mismatch is named after the user's forward (a loss function is its own); in a folder
        # the target is file.function
        target = dataclasses.replace(target, name=job.target, forward_name=job.forward or job.target)
        return catalogue.load()[pair.op], target, inputs, tuple(job.regimes)
    d, target = code.derivation_target(job.key, job)
    return d.spec(), target, d.inputs, tuple(d.regimes)


def _subject_job(job: Job, code, notes: dict):
    """build's answer for a gradaudit.function subject: the subject itself (each of its checks has its
    own spec and inputs, gradaudit/_subject_run.py), here or rebuilt from the audit child's description."""
    if isinstance(code, InChild):
        from ._subject_remote import subject_in_child

        return None, subject_in_child(code, job), None, None
    return built_subject(job, code, notes)


# ---- checking jobs ------------------------------------------------------------------------------------

def polish(rec: dict, job: Job, note: str | None = None) -> dict:
    """A record of an audited function: safe to print (user text escaped and cut), with the notes of
    the target and where it comes from. (The verdicts already name the user's functions: the Target
    carries their names.)"""
    rec = dict(rec)
    msg = str(rec.get("message") or "")
    # a note is context for a fail or an error; a standing one (cs231n.StandingNote: what could be
    # judged at all) goes on every record of the target
    if note and (rec.get("status") in ("fail", "error") or getattr(note, "standing", False)):
        msg = f"{msg} — {note}" if msg else str(note)
    rec["message"] = clean(msg, 2000)
    if rec.get("kink"):
        rec["kink"] = clean(rec["kink"], 500)
    rec["source"] = job.source or rec.get("source")
    rec["audited"] = Path(job.file).name
    if job.formula:
        rec["formula"] = job.formula
    return rec


def _record(job: Job, cell: dict, status: str, message: str) -> dict:
    from reports.records import new_record

    return new_record(target=cell.get("target", job.target), op=job.name if job.checks else job.op, oracle=cell["oracle"], device=cell["device"],
                      dtype=cell["dtype"], regime=cell["regime"], status=status, message=clean(message, 2000),
                      id=cell["id"], family=job.convention, source=job.source, device_name=cell["device"],
                      seconds=0.0, audited=Path(job.file).name)


def error_record(job: Job, cell: dict, message: str) -> dict:
    if not message.startswith(job.target):
        message = f"{job.target}: {message}"
    return dict(_record(job, cell, "error", message), blame="reference")


def first_cell(job: Job, cfg, suffix: str) -> dict:
    o, d = cfg.sides()[0]
    return {"id": f"{job.target}-{o}-{d}-{cfg.dtypes[0]}-{suffix}", "oracle": o, "device": d, "dtype": cfg.dtypes[0],
            "regime": "-"}


class _Collect:
    """The records of one target, held until it is done (a target whose child is lost is not a pass)."""

    def __init__(self):
        self.records: list[dict] = []

    def write(self, rec: dict) -> None:
        self.records.append(rec)


def check_job(job: Job, code, cfg, sink, done=()) -> list[dict]:
    """Check one job; its records, polished, go to `sink` once the target is done. `done`: ids of
    cells already recorded (a resumed run)."""
    from ._subject_run import run_cells  # properties.runner's, or a gradaudit.function subject's checks
    notes: dict = {}
    if job.skip:
        recs = [_record(job, first_cell(job, cfg, "not-checked"), "skip", job.skip)]
    else:
        got, lost = _Collect(), None
        try:
            spec, target, inputs, regimes = (_subject_job if job.convention == "function" else build)(job, code, notes)
        except ChildLost as e:
            lost = f"could not be set up: {e}"
        except Exception as e:  # the import or the derivation itself is broken: every cell errors
            lost = f"could not be set up: {e if isinstance(e, UserCodeError) else f'{type(e).__name__}: {e}'}"
        else:
            meta = {"audit_path": job.file, "convention": job.convention, "audit_name": job.name, "audit_op": job.op}
            try:
                run_cells(spec, target, inputs, regimes, cfg, got, done=done, family=job.convention, source=job.source,
                          case_meta=meta)
                code.settle(job)
            except (ChildLost, UserCodeError) as e:  # (a reply in no form the judge accepts, between cells)
                lost = str(e)
        recs = got.records
        if lost is not None:  # every cell not already failing says why the target could not finish
            written = {r["id"] for r in recs} | set(done)
            recs = [r if r["status"] in ("fail", "error") else error_record(job, r, lost) for r in recs]
            recs += [error_record(job, c, lost) for c in job.cells(cfg) if c["id"] not in written]
    recs = [polish(r, job, notes.get(job.name, notes.get(job.target))) for r in recs]  # by function or class name
    for r in recs:
        sink.write(r)
    return recs


def check_in_children(children: list[Child], jobs: list[Job], sink, cfg, done=()) -> list[dict]:
    """A session job (properties.session): `jobs` checked with the functions running in `children`,
    each child a lane of its own (gradaudit/_lanes.py)."""
    codes = {id(c): InChild(c) for c in children}

    def check(one: Child, job: Job, out) -> list[dict]:
        if job.key in one.load_errors and not job.skip:
            recs = [polish(error_record(job, first_cell(job, cfg, "import"), one.load_errors[job.key]), job)]
            for r in recs:
                out.write(r)
            return recs
        return check_job(job, codes[id(one)], cfg, out, done)

    return run_lanes(children, jobs, check, sink)


def check_in_fresh_child(sources: list[Source], conf: Confinement, jobs: list[Job], verbose: bool, sink, cfg,
                         done=()) -> list[dict]:
    """A session job for a `--workers` process or a shard: a child of its own."""
    with handled_signals(), Child(conf, sources, verbose=verbose) as child:
        return check_in_children([child], jobs, sink, cfg, done)


# ---- `gradaudit audit PATH` ---------------------------------------------------------------------------

def confinement(sources: list[Source], convention: str | None, cfg, *, timeout: float, memory_limit: str = "4G",
                pass_env=(), sandbox: str = "process") -> Confinement:
    """The child's confinement for an audit of `sources` under `cfg`; ValueError for a bad option."""
    if sandbox not in ("process", "bwrap"):
        raise ValueError(f"unknown sandbox {sandbox!r}; accepted: process, bwrap")
    if sandbox == "bwrap" and shutil.which("bwrap") is None:
        raise ValueError("--sandbox bwrap: bubblewrap is not installed (apt-get install bubblewrap)")
    frameworks = () if convention == "cs231n" else tuple(o for o in cfg.oracles if o in ("torch", "jax"))
    return Confinement(memory_limit=parse_size(memory_limit), pass_env=tuple(pass_env), sandbox=sandbox,
                       timeout=timeout, frameworks=frameworks, allow_tf32=cfg.allow_tf32, devices=tuple(cfg.devices),
                       jax_cache=child_jax_cache([s.text for s in sources], sandbox) if "jax" in frameworks else None)


class Audit:
    """One `gradaudit audit PATH`: its sources, read once by this process; a confined child that
    imports them once and serves the whole audit (or, with `--workers`, one child per worker); SIGTERM
    and SIGHUP unwind like Ctrl-C, so that the child and all it started are killed on the way out."""

    def __init__(self, sources: list[Source], convention: str | None, conf: Confinement, *, folder: bool = False,
                 verbose: bool = False, judge_cfg=None):
        self.sources, self.convention, self.conf, self.folder, self.verbose = sources, convention, conf, folder, verbose
        self.judge_cfg = judge_cfg  # the run's RunConfig: this process sets itself up while the child starts
        self.child = Child(conf, sources, verbose=verbose)
        self.lanes: list[Child] = []  # the children of the other lanes
        self._signals = handled_signals()
        # what a notebook or notes held that cannot run (IPython syntax, pseudo-code), and why
        self.notes = [f"{Path(s.path).name}: {m}" for s in sources
                      for m in getattr(documents.document_of(s.path), "messages", ())]

    def __enter__(self):
        self._signals.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            for child in (self.child, *self.lanes):
                child.close()
        finally:
            self._signals.__exit__(*exc)

    def plan(self) -> tuple[list[Job], list[str], list[str], list[str]]:
        """(jobs, absent cs231n pairs, why files could not be imported, hints). A file that cannot be
        imported is one error cell. ChildStartError when the child cannot start at all."""
        self.child.begin()
        if self.judge_cfg is not None:  # torch and JAX load here while they load in the child (both take seconds)
            from properties.session import prepare_process

            prepare_process(self.judge_cfg)
        self.child.ensure()
        self.notes += [f"{Path(s.path).name}: {m}" for s in self.sources for m in self.child.load_notes.get(s.key, ())]
        jobs, absent, errors, hints = [], [], [], []
        for src in self.sources:
            if src.key not in self.child.load_errors:
                try:
                    desc = self.child.describe(src.key)
                    got, gone, hint = plan(desc, src.path, src.key, self.convention, folder=self.folder,
                                           functions=self._backwards(src, desc), in_process=False)
                    jobs, absent, hints = jobs + got, absent + gone, hints + ([hint] if hint else [])
                    continue
                except (UserCodeError, ChildLost) as e:
                    self.child.load_errors[src.key] = str(e)
            errors.append(self.child.load_errors[src.key])
            name = Path(src.path).name
            jobs.insert(0, Job(name, "(import)", self.convention or "derivation", src.path, src.key, name, ["-"],
                               source=name))
        return jobs, absent, errors, hints

    def _backwards(self, src: Source, desc: dict) -> dict | None:
        if self.convention != "cs231n":
            return None
        from .cache_inference import FORWARD_ARGS

        have = {n for n in desc.get("functions") or () if isinstance(n, str)}
        return located_functions(src, desc, [n for n in FORWARD_ARGS if n in have])

    def session_jobs(self, jobs: list[Job], *, workers: int = 1, sharded: bool = False, children: int = 1):
        """The audit as session jobs: all of it in this audit's child (and, with `children` > 1 and more
        than one function to check, in as many children, one lane each: gradaudit/_lanes.py), or one
        chunk per worker (one function per job when sharded), each with a child of its own."""
        if not jobs:
            return []
        if not (sharded or workers > 1):
            self.lanes += more_children(self.child, children, sum(not j.skip and j.key not in self.child.load_errors
                                                                  for j in jobs))
            return [(Path(self.sources[0].path).name, functools.partial(check_in_children, [self.child, *self.lanes], jobs))]
        self.child.close()  # each worker process or shard job starts its own
        chunks = [[j] for j in jobs] if sharded else [jobs[i::workers] for i in range(workers)]
        return [(c[0].target if len(c) == 1 else f"{len(c)} functions",
                 functools.partial(check_in_fresh_child, self.sources, self.conf, c, self.verbose)) for c in chunks if c]
