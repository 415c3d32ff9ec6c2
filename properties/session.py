"""One run: jobs in, records and run metadata out. Prints nothing (the caller shows progress).

A *job* is the unit a worker process or a CI shard takes: `(label, fn)` with
`fn(sink, cfg, done) -> records` (a picklable function for `workers > 1`); `catalogue_jobs` makes one
per catalogue op and dtype. `run_session` sets up the process (or a pool of them), runs the jobs
into `report_dir/results.jsonl`, writes `run.json` at the start and at the end, and returns both.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import multiprocessing as mp
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Iterable, Sequence

import oracles
from reports.records import RecordSink, write_run_meta

from .config import RunConfig

__all__ = ["JAX_CACHE_ENV", "TORCH_THREADS_ENV", "Job", "apply_precision", "catalogue_jobs", "jax_cache_dir",
           "jax_cache_stats", "prepare_process", "run_meta", "run_session"]

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

_worker_sink: RecordSink | None = None


def _worker_init(results: str, cfg: RunConfig) -> None:
    global _worker_sink
    prepare_process(cfg)
    apply_precision(cfg)
    _worker_sink = RecordSink(Path(results))


def _worker_run(label, fn, cfg, done):
    t0 = time.perf_counter()
    before = jax_cache_stats()
    records = fn(_worker_sink, cfg, done)
    return label, records, time.perf_counter() - t0, _delta(before, jax_cache_stats())


def _in_pool(jobs: Sequence[Job], cfg: RunConfig, done, results: Path, workers: int, jax_stats: list):
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                             initargs=(str(results), cfg)) as pool:
        futures = [pool.submit(_worker_run, label, fn, cfg, done) for label, fn in jobs]
        for f in as_completed(futures):
            label, records, seconds, stats = f.result()
            jax_stats.append(stats)
            yield label, records, seconds


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


# ---- the run -------------------------------------------------------------------------------------

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_session(cfg: RunConfig, jobs: Sequence[Job], *, finished: Sequence[dict] | None = None, workers: int = 1,
                shard: tuple[int, int] | None = None, what: Sequence[str] = (), command: Sequence[str] = (),
                on_job: Callable[[str, list, float], None] | None = None) -> tuple[list[dict], dict]:
    """Run `jobs` into `cfg.report_dir/results.jsonl`; return (records, run metadata).

    `finished`: the records of cells already done (a resumed run): kept, their cells skipped, and
    results.jsonl appended to; None: a new run, results.jsonl started afresh. `workers > 1` runs the
    jobs in that many spawned processes appending to the same file. `shard` (i, n): only every n-th
    job, from the i-th (1-based): one CI matrix job's slice. `on_job(label, records, seconds)` is
    called as each job finishes. `what` (the ops or functions) and `command`: for run.json.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if shard is not None:
        i, n = shard
        if not (n >= 1 and 1 <= i <= n):
            raise ValueError(f"shard {i}/{n}: need 1 <= i <= n")
        jobs = [j for k, j in enumerate(jobs) if k % n == i - 1]
    report_dir = Path(cfg.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    results = report_dir / "results.jsonl"
    if finished is None:
        results.unlink(missing_ok=True)
    records = list(finished or ())
    done = frozenset(r["id"] for r in records)
    axes = dict(oracles=list(cfg.oracles), devices=list(cfg.devices), dtypes=list(cfg.dtypes), ops=list(what))
    started, t0 = _now(), time.perf_counter()
    shard = f"{shard[0]}/{shard[1]}" if shard is not None else None
    meta = run_meta(command, profile=cfg.profile, seed=cfg.seed, started=started, workers=workers, shard=shard,
                    **axes)
    write_run_meta(report_dir, meta)
    jax_stats: list[dict] = []
    run = (_in_process(jobs, cfg, done, results, jax_stats) if workers == 1
           else _in_pool(jobs, cfg, done, results, workers, jax_stats))
    try:
        with contextlib.closing(run):  # its own clean-up (the sink, the pool, the JAX figures) first
            for label, recs, seconds in run:
                records.extend(recs)
                if on_job is not None:
                    on_job(label, recs, seconds)
    finally:
        meta = run_meta(command, profile=cfg.profile, seed=cfg.seed, records=records, started=started,
                        finished=_now(), duration_s=round(time.perf_counter() - t0, 2), workers=workers,
                        shard=shard, flags=_flags(cfg, records), **axes)
        if "jax" in cfg.oracles:  # jit cache hits/misses, XLA compiles, persistent-cache hits
            meta["jax_cache"] = _merge(jax_stats)
        write_run_meta(report_dir, meta)
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
