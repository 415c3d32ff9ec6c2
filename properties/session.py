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
import json
import multiprocessing as mp
import os
import platform
import signal
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterable, Sequence

import oracles
from reports.records import (SOURCE_KEY, RecordError, RecordSink, ReportLock, cell_id, load_records, load_run_meta,
                             repair_tail, rewrite_records, write_run_meta)

from .config import RunConfig

__all__ = ["IDENTITY_KEYS", "JAX_CACHE_ENV", "TORCH_THREADS_ENV", "Job", "ResumeRefused", "WorkersLost",
           "apply_precision", "catalogue_jobs", "check_resume", "identity", "jax_cache_dir", "jax_cache_stats", "prepare_process",
           "run_meta", "run_session"]

Job = tuple[str, Callable]  # (label, fn(sink, cfg, done) -> records)

JAX_CACHE_ENV = "GRADAUDIT_JAX_CACHE"  # a directory, or off / 0 / none to disable the persistent cache
TORCH_THREADS_ENV = "GRADAUDIT_TORCH_THREADS"


# ---- the process ---------------------------------------------------------------------------------

_jax_events = {"backend_compiles": 0, "persistent_hits": 0, "compile_s": 0.0, "trace_s": 0.0, "lower_s": 0.0}
_prepared: dict = {}


def jax_cache_dir() -> str | None:
    """Where JAX keeps compiled executables between runs: $GRADAUDIT_JAX_CACHE, else
    $XDG_CACHE_HOME/gradaudit/jax (~/.cache/gradaudit/jax). None when disabled, or when the user
    already points JAX at a cache of their own ($JAX_COMPILATION_CACHE_DIR, which JAX reads itself)."""
    v = os.environ.get(JAX_CACHE_ENV)
    if v is not None:
        return None if v.strip().lower() in ("", "0", "off", "none", "false", "no") else v
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "gradaudit" / "jax")


def prepare_process(cfg: RunConfig | None = None) -> dict:
    """Set up the process that runs checks (the CLI's, each worker process, the benchmark's). Called
    by a run's entry points, never at import of a library module: a user's own process keeps its
    settings unless it asks for these.

    - NumPy's BLAS: one thread (threadpoolctl), for the same reason as torch's, see below.
    - torch: one intra-op thread ($GRADAUDIT_TORCH_THREADS to change). The catalogue's ops are
      tiny; torch's thread pool costs ~10-40 ms of synchronisation per call on a busy 2-core
      machine, ~100x the op itself. Parallelism comes from `workers` (processes) instead.
    - JAX: the persistent compilation cache (see `jax_cache_dir`), with no minimum compile time
      (JAX's default caches only compiles over 1 s; ours take 0.05-2 s each, and compiling is
      ~90% of the JAX oracle's cost in a CI run). Compiled executables are keyed by the program,
      the compile options, jaxlib and the device, so a cached one is the one XLA would build.
    """
    names = cfg.oracles if cfg is not None else ("torch", "jax")
    done = {}
    # NumPy's BLAS: one thread too. Interleaving a multi-threaded OpenBLAS call with torch's thread
    # pool hands cores back and forth: measured 32 ms for a 64x128 @ 128x96 matmul right after a torch
    # op (0.05 ms alone, 0.5 ms single-threaded) on the 2-core machine. The arrays here are small.
    try:
        from threadpoolctl import threadpool_limits

        if not _prepared.get("blas"):
            _prepared["blas"] = threadpool_limits(limits=1, user_api="blas")
        done["blas_threads"] = 1
    except ImportError:
        pass
    if "torch" in names:
        try:
            import torch

            n = int(os.environ.get(TORCH_THREADS_ENV, "1"))
            if n > 0 and torch.get_num_threads() != n:
                torch.set_num_threads(n)
            done["torch_threads"] = torch.get_num_threads()
        except Exception:  # torch missing: its oracle skips with the reason later
            pass
    if "jax" in names:
        cache = jax_cache_dir()
        try:
            import jax
        except Exception:
            jax = None
        if jax is not None:
            if cache is not None and not _prepared.get("jax_cache"):
                try:
                    Path(cache).mkdir(parents=True, exist_ok=True)
                    jax.config.update("jax_compilation_cache_dir", cache)
                    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
                    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
                    _prepared["jax_cache"] = cache
                except OSError:  # read-only home: run without the persistent cache
                    pass
            if not _prepared.get("jax_listeners"):
                _listen_jax()
                _prepared["jax_listeners"] = True
            done["jax_cache"] = _prepared.get("jax_cache") or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    return done


def apply_precision(cfg: RunConfig) -> None:
    """TF32 off for comparisons unless asked for; the flags in force go into every record."""
    for name in ("torch", "jax"):
        if name in cfg.oracles:
            try:
                oracles.get(name).set_tf32(cfg.allow_tf32)
            except oracles.OracleUnavailable:
                pass


def _listen_jax() -> None:
    """Count XLA compiles and persistent-cache hits (jax.monitoring events), for `jax_cache_stats`."""
    from jax import monitoring

    def on_event(event, **_):
        if event == "/jax/compilation_cache/cache_hits":
            _jax_events["persistent_hits"] += 1

    def on_duration(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            _jax_events["backend_compiles"] += 1
            _jax_events["compile_s"] += duration
        elif event == "/jax/core/compile/jaxpr_trace_duration":
            _jax_events["trace_s"] += duration
        elif event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            _jax_events["lower_s"] += duration

    monitoring.register_event_listener(on_event)
    monitoring.register_event_duration_secs_listener(on_duration)


def jax_cache_stats() -> dict:
    """This process's JAX oracle cache figures: `hits`/`misses` of its jit cache (one key per forward,
    static params, shapes and dtypes: a miss is a trace + compile), and of the misses how many the
    persistent cache served (`persistent_hits`) and how many XLA compiled (`xla_compiles`)."""
    mod = sys.modules.get("oracles.jax_oracle")  # never imported here: no JAX run, no figures
    out = dict(getattr(mod, "cache_stats", None) or {"hits": 0, "misses": 0})
    ev = dict(_jax_events)
    out.update(persistent_hits=ev["persistent_hits"],
               xla_compiles=max(ev["backend_compiles"] - ev["persistent_hits"], 0),
               compile_s=round(ev["compile_s"], 3), trace_s=round(ev["trace_s"], 3),
               lower_s=round(ev["lower_s"], 3))
    return out


def _delta(before: dict, after: dict) -> dict:
    return {k: round(v - before.get(k, 0), 3) if isinstance(v, float) else v - before.get(k, 0)
            for k, v in after.items()}


def _merge(stats: Iterable[dict]) -> dict:
    """Sum per-process (or per-job) figures; add the jit cache hit rate."""
    total: dict = {}
    for s in stats:
        for k, v in s.items():
            if k != "hit_rate":
                total[k] = total.get(k, 0) + v
    for k, v in total.items():
        if isinstance(v, float):
            total[k] = round(v, 3)
    calls = total.get("hits", 0) + total.get("misses", 0)
    total["hit_rate"] = round(total.get("hits", 0) / calls, 4) if calls else None
    return total


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


# ---- the worker pool -----------------------------------------------------------------------------
# Workers are spawned, not forked: torch and JAX start threads at import, and forking a process with
# threads can deadlock. Each worker imports the frameworks once, keeps its JAX compile cache for all
# the jobs it takes, and shares the persistent compilation cache on disk with the others.
#
# A worker never outlives the run: it leads a process group of its own (so that the run can kill it
# with whatever it started, and a terminal's Ctrl-C reaches the run alone, which decides), and it
# dies with its parent however the parent ends, kill -9 included (PR_SET_PDEATHSIG on Linux; a
# watching thread elsewhere).

_worker_sink: RecordSink | None = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Make this process end when `parent` does."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)
    if not armed:
        def watch():
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, name="gradaudit-parent-watch", daemon=True).start()


def _worker_init(results: str, cfg: RunConfig, parent: int) -> None:
    global _worker_sink
    _die_with_parent(parent)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run decides what an interrupt stops
    prepare_process(cfg)
    apply_precision(cfg)
    _worker_sink = RecordSink(Path(results))


def _worker_run(label, fn, cfg, done):
    t0 = time.perf_counter()
    before = jax_cache_stats()
    records = fn(_worker_sink, cfg, done)
    return label, records, time.perf_counter() - t0, _delta(before, jax_cache_stats())


class _PoolBroken(Exception):
    """A worker process died: `unfinished` are the jobs that did not come back."""

    def __init__(self, unfinished: list, why: str):
        super().__init__(why)
        self.unfinished, self.why = unfinished, why


class WorkersLost(RuntimeError):
    """Worker processes kept dying; the message lists the jobs that did not finish."""


def _kill_workers(procs) -> None:
    """SIGKILL each worker and its process group; wait for them."""
    for p in procs:
        for kill in (os.kill, os.killpg):
            with contextlib.suppress(OSError):
                kill(p.pid, signal.SIGKILL)
    for p in procs:
        p.join(5)


def _exit_text(procs) -> str:
    """How the worker that broke the pool ended (the pool stops the others with SIGTERM after it)."""
    codes = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
    codes.sort(key=lambda c: c == -signal.SIGTERM)
    if not codes:
        return "it ended abruptly"
    code = codes[0]
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _in_pool(jobs: Sequence[Job], cfg: RunConfig, done, results: Path, workers: int, jax_stats: list):
    ctx = mp.get_context("spawn")
    before = set(mp.active_children())
    pool = ProcessPoolExecutor(max_workers=min(workers, max(len(jobs), 1)), mp_context=ctx,
                               initializer=_worker_init, initargs=(str(results), cfg, os.getpid()))
    procs: list = []
    clean_exit = False
    try:
        futures = {pool.submit(_worker_run, label, fn, cfg, done): (label, fn) for label, fn in jobs}
        procs = [p for p in mp.active_children() if p not in before]
        pending = set(futures)
        for f in as_completed(futures):
            try:
                label, records, seconds, stats = f.result()
            except BrokenProcessPool:
                _kill_workers(procs)
                raise _PoolBroken([futures[g] for g in futures if g in pending],
                                  f"a worker process died ({_exit_text(procs)})") from None
            pending.discard(f)
            jax_stats.append(stats)
            yield label, records, seconds
        clean_exit = True
    finally:
        if not clean_exit:  # interrupted, or a job raised: no worker goes on writing
            _kill_workers(procs or [p for p in mp.active_children() if p not in before])
        pool.shutdown(wait=clean_exit, cancel_futures=True)


def _in_process(jobs: Sequence[Job], cfg: RunConfig, done, results: Path, jax_stats: list):
    prepare_process(cfg)  # one torch thread, JAX's persistent compile cache
    apply_precision(cfg)
    before = jax_cache_stats()
    try:
        with RecordSink(results) as sink:
            for label, fn in jobs:
                t0 = time.perf_counter()
                yield label, fn(sink, cfg, done), time.perf_counter() - t0
    finally:
        jax_stats.append(_delta(before, jax_cache_stats()))


# ---- what a results file holds, and whether a run may add to it -----------------------------------

class ResumeRefused(ValueError):
    """`--resume` onto records of another run (seed, profile, budget, lists or code differ)."""


IDENTITY_KEYS = ("seed", "profile", "examples", "ops", "oracles", "dtypes", "devices", "code")


def identity(cfg: RunConfig, what: Sequence[str], code: str | None) -> dict:
    """What makes two runs' cells comparable: a resumed run must match the run it continues."""
    from .config import PROFILES

    return {"seed": cfg.seed, "profile": cfg.profile,
            "examples": cfg.examples if cfg.examples is not None else PROFILES[cfg.profile]["max_examples"],
            "ops": sorted(set(what)), "oracles": sorted(set(cfg.oracles)), "dtypes": sorted(set(cfg.dtypes)),
            "devices": sorted(set(cfg.devices)), "code": code}


def _differences(before: dict, now: dict) -> list[str]:
    out = []
    for k in IDENTITY_KEYS:
        a, b = before.get(k), now.get(k)
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            gone, new = [x for x in a if x not in b], [x for x in b if x not in a]
            parts = ([f"not in this run: {_few(gone)}"] if gone else []) + ([f"new: {_few(new)}"] if new else [])
            out.append(f"{k} differ ({'; '.join(parts)})")
        elif k == "code":
            out.append("the checked code changed since")
        else:
            out.append(f"{k} differs (the records: {_none(a)}, this run: {_none(b)})")
    return out


def _none(v) -> str:
    return "none" if v is None else str(v)


def _few(items: list, n: int = 4) -> str:
    return ", ".join(map(str, items[:n])) + (f" and {len(items) - n} more" if len(items) > n else "")


def _check_resumable(report_dir: Path, mine: dict) -> list[dict]:
    """The previous invocations of run.json when this run may continue them; ResumeRefused else."""
    meta = load_run_meta(report_dir)
    theirs = meta.get("identity")
    if not isinstance(theirs, dict):
        raise ResumeRefused(f"cannot resume {report_dir}: its run.json does not say which run wrote the records "
                            f"(seed, profile, lists); run without --resume to start afresh, or add --force")
    diff = _differences(theirs, mine)
    if diff:
        raise ResumeRefused(f"cannot resume {report_dir}: {'; '.join(diff)}; run without --resume to start "
                            f"afresh, or add --force to mix them")
    return _invocations(meta)


def check_resume(cfg: RunConfig, *, what: Sequence[str] = (), code: str | None = None) -> None:
    """ResumeRefused when `cfg.report_dir` holds records of another run than this one would be (what
    `run_session(resume=True)` checks first): for a caller that wants to know before it starts."""
    report_dir = Path(cfg.report_dir)
    if (report_dir / "results.jsonl").exists():
        _check_resumable(report_dir, identity(cfg, what, code))


def _invocations(meta: dict) -> list[dict]:
    inv = meta.get("invocations")
    return [i for i in inv if isinstance(i, dict)] if isinstance(inv, list) else []


def _group(rec: dict) -> tuple:
    return (rec.get("target"), rec.get("op"), rec.get("dtype"), rec.get("regime"))


def _settle(results: Path, report_dir: Path, cfg: RunConfig) -> list[dict]:
    """Make results.jsonl a place to append to, and return the cells it holds that are done: the
    partial last line cut off; the cells of a group that was not finished (a run stopped between
    its records) dropped with their cases, so that the group reruns whole instead of twice; a cell
    recorded twice kept once (the later record). Only with the folder's lock held."""
    if not results.exists():
        return []
    repair_tail(results)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reasons are handled here
        raw = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = load_records([results])
    sides = cfg.sides()
    groups: dict[tuple, set] = {}
    for r in kept:
        groups.setdefault(_group(r), set()).add(r.get("id"))
    whole = set()
    for key, ids in groups.items():
        target, op, dtype, regime = key
        expected = {cell_id(target=target, op=str(op), oracle=o, device=d, dtype=str(dtype), regime=str(regime))
                    for o, d in sides}
        if expected <= ids:
            whole.add(key)
    out = []
    for r in kept:
        r.pop(SOURCE_KEY, None)
        if _group(r) in whole:
            out.append(r)
        elif r.get("counterexample"):
            with contextlib.suppress(OSError):
                (report_dir / str(r["counterexample"])).unlink()
    if len(out) != len(raw):
        rewrite_records(results, out)
    return out


def _start_afresh(report_dir: Path, results: Path) -> None:
    """A new run: no record, case or page of an earlier one is left to be mixed with its own."""
    results.unlink(missing_ok=True)
    (report_dir / "index.html").unlink(missing_ok=True)
    cases = report_dir / "cases"
    if cases.is_dir():
        for f in cases.iterdir():
            if f.suffix in (".npz", ".tmp") and f.is_file():
                with contextlib.suppress(OSError):
                    f.unlink()


def _read_back(results: Path, fallback: list[dict]) -> list[dict]:
    """The run's records as `gradaudit report` reads them from results.jsonl (one per cell); what the
    jobs returned when the file cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            recs = load_records([results]) if results.exists() else []
    except (OSError, RecordError):
        return fallback
    for r in recs:
        r.pop(SOURCE_KEY, None)
    return recs


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
            earlier = _check_resumable(report_dir, mine)
        except ResumeRefused:
            if not force:
                raise
            earlier = _invocations(load_run_meta(report_dir))
        finished = _settle(results, report_dir, cfg)
    else:
        _start_afresh(report_dir, results)
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
            run = (_in_process(todo, cfg, done, results, jax_stats) if workers == 1
                   else _in_pool(todo, cfg, done, results, workers, jax_stats))
            try:
                with contextlib.closing(run):  # its own clean-up (the sink, the pool, the JAX figures) first
                    for label, recs, seconds in run:
                        records.extend(recs)
                        if on_job is not None:
                            on_job(label, recs, seconds)
                break
            except _PoolBroken as e:
                names = ", ".join(label for label, _ in e.unfinished)
                if attempt == 2:
                    raise WorkersLost(f"{e.why} again; {len(e.unfinished)} job(s) not finished: {names} "
                                      f"(their cells are missing; --resume runs them)") from None
                warnings.warn(f"{e.why}; rerunning its {len(e.unfinished)} unfinished job(s): {names}")
                finished = _settle(results, report_dir, cfg)  # what the dead worker left, made whole
                todo = e.unfinished
        outcome = "finished"
    except Exception as e:
        outcome = f"error: {type(e).__name__}: {e}"
        raise
    finally:
        records = _read_back(results, records)
        meta = run_meta(command, profile=cfg.profile, seed=cfg.seed, records=records, started=started,
                        finished=_now(), duration_s=round(time.perf_counter() - t0, 2), workers=workers,
                        shard=shard, flags=_flags(cfg, records), **axes)
        if "jax" in cfg.oracles:  # jit cache hits/misses, XLA compiles, persistent-cache hits
            meta["jax_cache"] = _merge(jax_stats)
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
