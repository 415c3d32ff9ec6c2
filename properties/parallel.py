"""`--workers N`: run jobs in a pool of processes that append to one results.jsonl.

Workers are spawned, not forked: torch and JAX start threads at import, and forking a process with
threads can deadlock. Each worker imports the frameworks once and keeps its JAX compile cache.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

_sink = None


def _init(results: str, cfg) -> None:
    global _sink
    from .runner import RecordSink, apply_precision

    apply_precision(cfg)
    _sink = RecordSink(Path(results))


def _run(label, fn, cfg):
    t0 = time.perf_counter()
    return label, fn(_sink, cfg), time.perf_counter() - t0


def run_parallel(jobs, cfg, results: Path, workers: int):
    """Yields (label, records, seconds) as jobs finish."""
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init,
                             initargs=(str(results), cfg)) as pool:
        futures = [pool.submit(_run, label, fn, cfg) for label, fn in jobs]
        for f in as_completed(futures):
            yield f.result()
