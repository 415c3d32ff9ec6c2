"""The process a run checks in: one BLAS/torch thread, JAX's persistent compilation cache and its
compile telemetry, the matmul precision of the run (properties/session.py sets it up for itself and
for each worker)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable

import oracles

from .config import RunConfig

__all__ = ["JAX_CACHE_ENV", "TORCH_THREADS_ENV", "apply_precision", "jax_cache_dir", "jax_cache_stats",
           "merge_stats", "prepare_process", "stats_delta"]

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
    """Set up the process that runs checks (the CLI's, each worker process, the audit child, the
    benchmark's). Called by a run's entry points, never at import of a library module: a user's own
    process keeps its settings unless it asks for these. Returns what it arranged.

    - NumPy's BLAS: one thread (threadpoolctl), for the same reason as torch's, see below.
    - torch: one intra-op thread ($GRADAUDIT_TORCH_THREADS to change). The catalogue's ops are
      tiny; torch's thread pool costs ~10-40 ms of synchronisation per call on a busy 2-core
      machine, ~100x the op itself. Parallelism comes from `workers` (processes) instead.
    - JAX: the persistent compilation cache (see `jax_cache_dir`), with no minimum compile time
      (JAX's default caches only compiles over 1 s; ours take 0.05-2 s each, and compiling is
      ~90% of the JAX oracle's cost in a CI run). Compiled executables are keyed by the program,
      the compile options, jaxlib and the device, so a cached one is the one XLA would build.

    torch's and JAX's settings apply when an oracle first imports the framework (oracles.base.on_load),
    not here: an audit's judge, whose derivations are differentiated in the audit child, never imports
    either (4-5 s of CPU on a 2-core machine, beside the child importing them too).
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
        n = int(os.environ.get(TORCH_THREADS_ENV, "1"))
        if n > 0:
            oracles.on_load("torch", "threads", lambda torch: torch.get_num_threads() != n and torch.set_num_threads(n))
            done["torch_threads"] = n
    if "jax" in names:
        cache = jax_cache_dir()
        oracles.on_load("jax", "cache", lambda jax: _prepare_jax(jax, cache))
        done["jax_cache"] = cache or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    return done


def _prepare_jax(jax, cache: str | None) -> None:
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


def apply_precision(cfg: RunConfig) -> None:
    """TF32 off for comparisons unless asked for (when the framework loads, see `prepare_process`);
    the flags in force go into every record."""
    for name in ("torch", "jax"):
        if name in cfg.oracles:
            oracles.on_load(name, "tf32", lambda module, name=name: oracles.get(name).set_tf32(cfg.allow_tf32, module))


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


def stats_delta(before: dict, after: dict) -> dict:
    return {k: round(v - before.get(k, 0), 3) if isinstance(v, float) else v - before.get(k, 0)
            for k, v in after.items()}


def merge_stats(stats: Iterable[dict]) -> dict:
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
