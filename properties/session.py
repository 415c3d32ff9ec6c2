"""One run: jobs in, records and run metadata out. Prints nothing (the caller shows progress).

A *job* is the unit a worker process or a CI shard takes: `(label, fn)` with
`fn(sink, cfg, done) -> records` (a picklable function for `workers > 1`); `catalogue_jobs` makes one
per catalogue op and dtype. `run_session` locks the report folder, sets up the process (or a pool
of them), runs the jobs into `report_dir/results.jsonl`, writes `run.json` at the start and at the
end (every invocation on that folder is listed there), and returns both. A resumed run continues
exactly the run it resumes (docs/reliability.md): same identity, partial groups rerun whole.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import oracles
from reports.records import (ReportLock, load_run_meta, write_run_meta)

from .config import RunConfig
from .pool import PoolBroken, WorkersLost, in_pool, in_process
from .process import (JAX_CACHE_ENV, TORCH_THREADS_ENV, apply_precision, jax_cache_dir, jax_cache_stats, merge_stats,
                      prepare_process)
from .resume import (IDENTITY_KEYS, ResumeRefused, check_resumable, check_resume, identity, invocations, read_back,
                     settle, start_afresh)

__all__ = ["IDENTITY_KEYS", "JAX_CACHE_ENV", "TORCH_THREADS_ENV", "Job", "ResumeRefused", "WorkersLost",
           "apply_precision", "catalogue_jobs", "check_resume", "identity", "jax_cache_dir", "jax_cache_stats", "prepare_process",
           "run_meta", "run_session"]

Job = tuple[str, Callable]  # (label, fn(sink, cfg, done) -> records)


# ---- the jobs ------------------------------------------------------------------------------------

def catalogue_jobs(ops: Iterable[str], dtypes: Iterable[str]) -> list[Job]:
    """One job per (op, dtype): the unit a worker or a shard takes."""
    dtypes = tuple(dtypes)
    return [(f"{op} {dtype}", functools.partial(_run_catalogue_op, op, dtype)) for op in ops for dtype in dtypes]


def _run_catalogue_op(op: str, dtype: str, sink, cfg: RunConfig, done=()) -> list[dict]:
    from dataclasses import replace

    from . import catalogue
    from .runner import run_target_cells
    from .target import Target

    spec = catalogue.load()[op]
    return run_target_cells(spec, Target.reference(spec), spec.inputs, spec.regimes, replace(cfg, dtypes=(dtype,)),
                            sink, done=done)


# ---- the run -------------------------------------------------------------------------------------

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_session(cfg: RunConfig, jobs: Sequence[Job], *, resume: bool = False, force: bool = False,
                wait: bool = False, code: str | None = None, workers: int = 1,
                shard: tuple[int, int] | None = None, what: Sequence[str] = (), command: Sequence[str] = (),
                on_job: Callable[[str, list, float], None] | None = None,
                on_wait: Callable[[int | None], None] | None = None) -> tuple[list[dict], dict]:
    """Run `jobs` into `cfg.report_dir/results.jsonl`; return (records, run metadata).

    The report folder is locked for the run (reports.records.ReportLock: ReportBusy when another
    process has it, unless `wait`; `on_wait(pid)` is told before waiting). `resume`: keep the cells
    already recorded and skip them (ResumeRefused when the records come from a run with another
    seed, profile, budget, list of ops/oracles/dtypes/devices or `code` hash, unless `force`);
    otherwise results.jsonl, the cases and the page start afresh. `workers > 1` runs the jobs in
    that many spawned processes appending to the same file; a worker that dies has its unfinished
    jobs rerun once in a fresh pool (WorkersLost when that dies too). `shard` (i, n): only every
    n-th job, from the i-th (1-based): one CI matrix job's slice. `on_job(label, records, seconds)`
    is called as each job finishes. `what` (the ops or functions), `code` (a hash of the checked
    code) and `command`: for run.json. The records returned are results.jsonl's, one per cell.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if shard is not None:
        i, n = shard
        if not (n >= 1 and 1 <= i <= n):
            raise ValueError(f"shard {i}/{n}: need 1 <= i <= n")
        jobs = [j for k, j in enumerate(jobs) if k % n == i - 1]
    report_dir = Path(cfg.report_dir)
    with ReportLock(report_dir, wait=wait, on_wait=on_wait):
        return _run_locked(cfg, list(jobs), report_dir, resume=resume, force=force, code=code, workers=workers,
                           shard=shard, what=what, command=command, on_job=on_job)


def _run_locked(cfg, jobs, report_dir, *, resume, force, code, workers, shard, what, command, on_job):
    results = report_dir / "results.jsonl"
    mine = identity(cfg, what, code)
    earlier: list[dict] = []
    if resume and results.exists():
        try:
            earlier = check_resumable(report_dir, mine)
        except ResumeRefused:
            if not force:
                raise
            earlier = invocations(load_run_meta(report_dir))
        finished = settle(results, report_dir, cfg)
    else:
        start_afresh(report_dir, results)
        finished = []
    records = list(finished)
    axes = dict(oracles=list(cfg.oracles), devices=list(cfg.devices), dtypes=list(cfg.dtypes), ops=list(what))
    started, t0 = _now(), time.perf_counter()
    shard = f"{shard[0]}/{shard[1]}" if shard is not None else None
    this = {"command": list(command), "started": started, "resumed": bool(resume and finished), "forced": force,
            "workers": workers, "shard": shard, **mine}

    meta = run_meta(command, profile=cfg.profile, seed=cfg.seed, started=started, workers=workers, shard=shard,
                    **axes)
    meta.update(identity=mine, invocations=[*earlier, dict(this, finished=None, outcome="running")])
    write_run_meta(report_dir, meta)
    jax_stats: list[dict] = []
    outcome = "interrupted"
    try:
        todo = jobs
        for attempt in (1, 2):
            done = frozenset(r["id"] for r in finished)
            run = (in_process(todo, cfg, done, results, jax_stats) if workers == 1
                   else in_pool(todo, cfg, done, results, workers, jax_stats))
            try:
                with contextlib.closing(run):  # its own clean-up (the sink, the pool, the JAX figures) first
                    for label, recs, seconds in run:
                        records.extend(recs)
                        if on_job is not None:
                            on_job(label, recs, seconds)
                break
            except PoolBroken as e:
                names = ", ".join(label for label, _ in e.unfinished)
                if attempt == 2:
                    raise WorkersLost(f"{e.why} again; {len(e.unfinished)} job(s) not finished: {names} "
                                      f"(their cells are missing; --resume runs them)") from None
                warnings.warn(f"{e.why}; rerunning its {len(e.unfinished)} unfinished job(s): {names}")
                finished = settle(results, report_dir, cfg)  # what the dead worker left, made whole
                todo = e.unfinished
        outcome = "finished"
    except Exception as e:
        outcome = f"error: {type(e).__name__}: {e}"
        raise
    finally:
        records = read_back(results, records)
        meta = run_meta(command, profile=cfg.profile, seed=cfg.seed, records=records, started=started,
                        finished=_now(), duration_s=round(time.perf_counter() - t0, 2), workers=workers,
                        shard=shard, flags=_flags(cfg, records), **axes)
        if "jax" in cfg.oracles:  # jit cache hits/misses, XLA compiles, persistent-cache hits
            meta["jax_cache"] = merge_stats(jax_stats)
        meta.update(identity=mine, invocations=[*earlier, dict(this, finished=meta["finished"], outcome=outcome)])
        try:
            write_run_meta(report_dir, meta)
        except OSError:
            if outcome == "finished":  # else the first failure is the one to report
                raise
    return records, meta


def _flags(cfg: RunConfig, records) -> dict:
    """The precision flags in force, from the records when there are any: in a run with workers the
    frameworks were imported by the workers only, and importing them here just for this took seconds."""
    flags = {}
    for r in records:
        flags.update(r.get("flags") or {})
    if flags:
        return flags
    for o in cfg.oracles:
        try:
            flags.update(oracles.get(o).flags())
        except Exception:
            pass
    return flags


def _versions(extra: Sequence[str] = ()) -> dict:
    """Python's and the libraries' versions; a framework's from its module when this process imported
    it, else from its installed metadata (importing one here just for this costs seconds)."""
    from importlib import metadata

    v = {"python": platform.python_version()}
    for dist in ("numpy", "hypothesis", "torch", "jax", *extra):
        mod = sys.modules.get(dist)
        if mod is not None and getattr(mod, "__version__", None):
            v[dist] = mod.__version__
            continue
        try:
            v[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return v


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_meta(command: Sequence[str], *, profile: str | None, seed=None, records: Sequence[dict] = (),
             started: str | None = None, finished: str | None = None, duration_s: float | None = None,
             oracles: Sequence[str] | None = None, devices: Sequence[str] | None = None,
             dtypes: Sequence[str] | None = None, ops: Sequence[str] | None = None, workers=1,
             shard: str | None = None, flags: dict | None = None, versions_of: Sequence[str] = ()) -> dict:
    """run.json (docs/result_record.md), for `gradaudit run`/`audit` and the pytest plugin alike. The
    axes default to those the records show; the flags to the records'; `versions_of`: more
    distributions whose versions to record."""
    def seen(key):
        return sorted({str(r.get(key)) for r in records})

    if flags is None:
        flags = {}
        for r in records:
            flags.update(r.get("flags") or {})
    meta = {"command": list(command), "seed": seed, "profile": profile, "started": started, "finished": finished,
            "duration_s": duration_s, "oracles": list(oracles) if oracles is not None else seen("oracle"),
            "devices": list(devices) if devices is not None else seen("device"),
            "dtypes": list(dtypes) if dtypes is not None else seen("dtype"),
            "ops": list(ops) if ops is not None else seen("op"), "cpu": _cpu_name(),
            "gpus": sorted({r.get("device_name") or "cuda" for r in records
                            if r.get("device") == "cuda" and r.get("status") != "skip"}),
            "shard": shard, "workers": workers, "flags": flags}
    if finished is not None:
        meta["versions"] = _versions(versions_of)
    return meta
