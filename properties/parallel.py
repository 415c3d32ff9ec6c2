"""`--workers N`: run jobs in a pool of processes that append to one results.jsonl.

Workers are spawned, not forked: torch and JAX start threads at import, and forking a process with
threads can deadlock. Each worker imports the frameworks once, keeps its JAX compile cache for all
the jobs it takes, and shares the persistent compilation cache on disk with the others.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

_sink = None


def _init(results: str, cfg) -> None:
    global _sink
    from .runner import RecordSink, apply_precision, prepare_process

    prepare_process(cfg)
    apply_precision(cfg)
    _sink = RecordSink(Path(results))


def _run(label, fn, cfg):
    from .runner import jax_cache_delta, jax_cache_stats

    t0 = time.perf_counter()
    before = jax_cache_stats()
    records = fn(_sink, cfg)
    return label, records, time.perf_counter() - t0, jax_cache_delta(before, jax_cache_stats())


def run_parallel(jobs, cfg, results: Path, workers: int, jax_stats: list | None = None):
    """Yields (label, records, seconds) as jobs finish; appends each job's JAX cache figures to
    `jax_stats` when given."""
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init,
                             initargs=(str(results), cfg)) as pool:
        futures = [pool.submit(_run, label, fn, cfg) for label, fn in jobs]
        for f in as_completed(futures):
            label, records, seconds, stats = f.result()
            if jax_stats is not None:
                jax_stats.append(stats)
            yield label, records, seconds
