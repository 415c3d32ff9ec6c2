"""The runner: Hypothesis drives each op x dtype x regime; every example is checked against every
requested (oracle, device) side at once; a failure is shrunk, triangulated and saved; one record per
cell (op x oracle x device x dtype x regime) is appended to results.jsonl as soon as it is known.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis import target as hypothesis_target
from hypothesis.database import DirectoryBasedExampleDatabase

import oracles
from oracles.base import Projection, as_tuple
from reports.records import new_record

from .evaluate import Evaluation, Side, SideVerdict, classify_kinks, evaluate, flag_mutation, judge_side, oracles_agree
from .devices import device_figures, explain_tf32
from .spec import Case, OpSpec, to_jsonable
from .strategies import breadth
from .target import Target

PROFILES = {
    # derandomized: the same examples on every CI run; no database, so no state leaks between runs.
    # 12 examples per (op, regime, dtype) over each op's 2-3 ci geometries (BREADTH below): JAX
    # compiles ~140 shapes for the whole catalogue, and 91% of its calls hit its jit cache.
    "ci": dict(max_examples=12, derandomize=True, database=None),
    "dev": dict(max_examples=25),
    "thorough": dict(max_examples=200),
}
# Shape breadth per profile (properties.strategies.breadth): ci draws each op's edge and rich
# geometries only, so a derandomized run compiles ~2 JAX shapes per (op, dtype); dev and thorough
# draw from every bounded set.
BREADTH = {"ci": "narrow", "dev": "full", "thorough": "full"}
# Every phase but `explain`: explain re-runs the shrunk failing example under sys.settrace, and
# re-runs it with parts varied, to annotate Hypothesis's own "Falsifying example" printout, which the
# runner never shows (it catches the failure and records, triangulates and saves the case itself).
# Measured on five of tests/planted.py's wrong derivations (dev profile): 15 s of CPU with it, 3 s without.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
for _name, _kw in PROFILES.items():
    settings.register_profile(
        f"gradaudit-{_name}", deadline=None, print_blob=False, report_multiple_bugs=False, phases=PHASES,
        # an LSTM example takes ~10 ms and medium arrays are large: neither is a problem here
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], **_kw)


class Disagreement(AssertionError):
    """Raised inside the Hypothesis test so that it shrinks the case."""


@dataclass
class SideTally:
    examples: int = 0
    kinks: int = 0
    worst: SideVerdict | None = None  # the passing example nearest to failing
    worst_ev: Evaluation | None = None
    kink_reason: str | None = None
    skip: str | None = None


@dataclass
class RunConfig:
    oracles: tuple[str, ...] = oracles.ORACLES
    devices: tuple[str, ...] = ("cpu",)
    dtypes: tuple[str, ...] = ("float64", "float32")
    profile: str = "dev"
    examples: int | None = None
    seed: int | None = None
    report_dir: Path = Path("gradaudit-report")
    database: str | None = None  # example database: a directory, or redis://host:port/db (None: none)
    done: set = field(default_factory=set)  # ids of cells already recorded (resume)
    allow_tf32: bool = False

    def sides(self) -> list[Side]:
        return [(o, d) for o in self.oracles for d in self.devices if not (o == "numeric" and d != "cpu")]


class RecordSink:
    """Appends one JSON line per record, each with a single write() on an O_APPEND descriptor: a killed
    run keeps every finished cell, and several worker processes can share one results.jsonl."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict) -> None:
        line = json.dumps(_json_safe(record), allow_nan=False, default=str) + "\n"
        os.write(self._fd, line.encode("utf-8"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _json_safe(v):
    """Infinity/NaN are not JSON (jq and JSON.parse reject them): write null."""
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


@functools.cache
def example_database(where: str):
    """Hypothesis's own example database: a directory, or Redis (shared by CI shards, so a failure
    found on one shard replays first on every shard)."""
    if where.startswith(("redis://", "rediss://", "unix://")):
        import redis
        from hypothesis.extra.redis import RedisExampleDatabase

        return RedisExampleDatabase(redis.Redis.from_url(where))
    return DirectoryBasedExampleDatabase(where)


def apply_precision(cfg: "RunConfig") -> None:
    """TF32 off for comparisons unless asked for; the flags in force go into every record."""
    for name in ("torch", "jax"):
        if name in cfg.oracles:
            try:
                oracles.get(name).set_tf32(cfg.allow_tf32)
            except oracles.OracleUnavailable:
                pass


JAX_CACHE_ENV = "GRADAUDIT_JAX_CACHE"  # a directory, or off / 0 / none to disable the persistent cache
TORCH_THREADS_ENV = "GRADAUDIT_TORCH_THREADS"
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


def prepare_process(cfg: "RunConfig | None" = None) -> dict:
    """Set up the process that runs checks (the CLI's, each `--workers` process, the benchmark's).
    Called by the runner's entry points, never at import of a library module: a user's own process
    keeps its settings unless it asks for these.

    - NumPy's BLAS: one thread (threadpoolctl), for the same reason as torch's, see below.
    - torch: one intra-op thread ($GRADAUDIT_TORCH_THREADS to change). The catalogue's ops are
      tiny; torch's thread pool costs ~10-40 ms of synchronisation per call on a busy 2-core
      machine, ~100x the op itself. Parallelism comes from `--workers` (processes) instead.
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
                _listen_jax(jax)
                _prepared["jax_listeners"] = True
            done["jax_cache"] = _prepared.get("jax_cache") or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    return done


def _listen_jax(jax) -> None:
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
    """This process's JAX oracle cache figures: `hits`/`misses` of its jit cache (one key per op,
    static params, shapes and dtypes: a miss is a trace + compile), and of the misses how many the
    persistent cache served (`persistent_hits`) and how many XLA compiled (`xla_compiles`)."""
    import sys

    mod = sys.modules.get("oracles.jax_oracle")
    out = dict(getattr(mod, "cache_stats", None) or {"hits": 0, "misses": 0})
    ev = dict(_jax_events)
    out.update(persistent_hits=ev["persistent_hits"],
               xla_compiles=max(ev["backend_compiles"] - ev["persistent_hits"], 0),
               compile_s=round(ev["compile_s"], 3), trace_s=round(ev["trace_s"], 3),
               lower_s=round(ev["lower_s"], 3))
    return out


def jax_cache_delta(before: dict, after: dict) -> dict:
    return {k: round(v - before.get(k, 0), 3) if isinstance(v, float) else v - before.get(k, 0)
            for k, v in after.items()}


def merge_jax_cache_stats(stats: Iterable[dict]) -> dict:
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


def catalogue_job(op: str, dtype: str):
    """A picklable job: the catalogue op's reference in one dtype (what a worker or shard runs)."""
    return functools.partial(_run_catalogue_op, op, dtype)


def _run_catalogue_op(op: str, dtype: str, sink, cfg: "RunConfig") -> list[dict]:
    from . import catalogue  # noqa: F401
    from .spec import CATALOGUE

    spec = CATALOGUE[op]
    return run_target_cells(spec, Target.reference(spec), spec.inputs, spec.regimes,
                            dataclasses.replace(cfg, dtypes=(dtype,)), sink)


def cell_id(target: Target, oracle: str, device: str, dtype: str, regime: str) -> str:
    head = target.op if target.name == f"{target.op}_backward" else target.name
    return f"{head}-{oracle}-{device}-{dtype}-{regime}"


def _finite(x):
    return None if x is None or not np.isfinite(x) else float(x)


def run_group(spec: OpSpec | None, target: Target, cases, dtype: str, regime: str, cfg: RunConfig,
              sink: RecordSink, *, family: str = "", source: str = "") -> list[dict]:
    """Search one op x dtype x regime over every side; write and return one record per side."""
    t0 = time.perf_counter()
    sides = cfg.sides()
    tallies = {s: SideTally() for s in sides}
    # sides that cannot run here are skipped before the search, with the framework's reason
    for s in sides:
        try:
            oracles.get(s[0]).check_available(s[1])
        except oracles.OracleUnavailable as e:
            tallies[s].skip = str(e)
    live = [s for s in sides if tallies[s].skip is None]
    state = {"first_fail": None, "last_fail": None}

    def check(case: Case, dout_seed: int) -> None:
        ev = evaluate(spec, target, case, dtype, live, dout_seed=dout_seed)
        if state["first_fail"] is None:
            for s in live:
                t, v = tallies[s], ev.sides[s]
                t.examples += 1
                if v.status == "kink":
                    t.kinks += 1
                    t.kink_reason = v.message
                elif v.status == "pass" and v.cmp is not None and (t.worst is None or v.cmp.ratio > t.worst.cmp.ratio):
                    t.worst, t.worst_ev = v, ev
        if ev.failed:
            state["last_fail"] = ev
            if state["first_fail"] is None:
                state["first_fail"] = ev
            raise Disagreement(ev.error or "; ".join(v.message for v in ev.sides.values()
                                                     if v.status in ("fail", "error")))
        ratio = ev.worst_ratio
        if np.isfinite(ratio):
            hypothesis_target(float(ratio), label="error / tolerance")

    if live:
        kw = {}
        if cfg.examples is not None:
            kw["max_examples"] = cfg.examples
        if cfg.database is not None and cfg.profile != "ci":
            kw["database"] = example_database(cfg.database)
        test = settings(settings.get_profile(f"gradaudit-{cfg.profile}"), **kw)(
            given(case=cases, dout_seed=st.integers(0, 2**16))(check))
        if cfg.seed is not None:
            test = hypothesis_seed(cfg.seed)(test)
        # one example database key per cell group: failures replay on the group that found them
        test._hypothesis_internal_database_key = f"gradaudit/{target.name}/{regime}/{dtype}".encode()
        try:
            with breadth(BREADTH.get(cfg.profile, "full")):  # read as the strategies draw
                test()
        except Disagreement:
            pass
        except Exception as e:  # a strategy bug, or Hypothesis giving up: an error, not a crash
            if state["last_fail"] is None:
                for s in live:
                    tallies[s].skip = None
                return _write_all(sink, [dict(_base(spec, target, s, dtype, regime, family, source),
                                              status="error", examples=tallies[s].examples,
                                              message=f"the search itself failed: {type(e).__name__}: {e}")
                                         for s in live] + _skips(spec, target, sides, tallies, dtype, regime,
                                                                 family, source, cfg))
    records = _skips(spec, target, sides, tallies, dtype, regime, family, source, cfg)
    final: Evaluation | None = state["last_fail"]
    if final is not None:
        _triangulate(spec, target, final, cfg)
    for s in live:
        t = tallies[s]
        rec = _base(spec, target, s, dtype, regime, family, source)
        rec["examples"] = t.examples
        v = final.sides.get(s) if final is not None else None
        if v is not None and v.status in ("fail", "error"):
            rec.update(_verdict_fields(v, final))
            rec.update(_save_case(cfg.report_dir, rec["id"], final, s))
        elif t.kinks:
            rec.update(status="kink", kink=t.kink_reason, message=f"{t.kinks} of {t.examples} examples on a kink: {t.kink_reason}")
            if t.worst is not None:
                rec.update(_figures(t.worst, t.worst_ev))
        else:
            rec.update(status="pass", message=f"{t.examples} examples agree")
            if t.worst is not None:
                rec.update(_figures(t.worst, t.worst_ev))
                rec["worst_target"] = _finite(t.worst.cmp.ratio)
                rec["message"] += f"; worst error {t.worst.cmp.ratio:.2g} of the tolerance ({t.worst.phase})"
        if s[1] != "cpu":  # the CPU-vs-GPU differential and run-to-run spread, on the case shown
            shown = final if v is not None and v.status in ("fail", "error") else t.worst_ev
            if shown is not None:
                rec.update(device_figures(target, shown, s, spec.tolerance if spec else None))
        records.append(rec)
    elapsed = time.perf_counter() - t0
    for r in records:
        r["seconds"] = round(elapsed / max(len(records), 1), 4)
    return _write_all(sink, records)


def _write_all(sink, records):
    for r in records:
        sink.write(r)
    return records


def _skips(spec, target, sides, tallies, dtype, regime, family, source, cfg):
    return [dict(_base(spec, target, s, dtype, regime, family, source), status="skip", examples=0,
                 message=tallies[s].skip) for s in sides if tallies[s].skip is not None]


def _base(spec, target, side, dtype, regime, family, source) -> dict:
    oracle, device = side
    return new_record(target=target.name, op=target.op, oracle=oracle, device=device, dtype=dtype, regime=regime,
                      id=cell_id(target, oracle, device, dtype, regime),
                      family=spec.family if spec else family, source=spec.source if spec else source,
                      device_name=_device_name(oracle, device), flags=_flags(oracle))


def _device_name(oracle, device):
    try:
        return oracles.get(oracle).device_name(device)
    except Exception:
        return device


def _flags(oracle):
    try:
        return oracles.get(oracle).flags()
    except Exception:
        return {}


def _figures(v: SideVerdict, ev: Evaluation) -> dict:
    c = v.cmp
    out = {"phase": v.phase, "shapes": ev.case.shapes(), "params": to_jsonable(ev.case.scalar_params()),
           "tolerance_source": v.tolerance_source}
    if c is not None:
        out.update(max_abs_err=_finite(c.max_abs), max_rel_err=_finite(c.max_rel), max_ulp=_finite(c.max_ulp),
                   worst_index=list(c.worst_index) if c.worst_index is not None else None,
                   atol=c.atol, rtol=c.rtol, needed_atol=_finite(c.needed_atol), needed_rtol=_finite(c.needed_rtol))
    return out


def _verdict_fields(v: SideVerdict, ev: Evaluation) -> dict:
    out = _figures(v, ev)
    out.update(status=v.status, kind=v.kind, pattern=v.pattern, message=v.message, mutated=list(ev.mutated),
               blame=v.blame, triangulation=v.triangulation)
    return out


def _triangulate(spec: OpSpec | None, target: Target, ev: Evaluation, cfg: RunConfig) -> None:
    """Name the side that is out: compare the failing case against every oracle available, not only
    the requested ones, and, for float32, see whether the gap closes in float64."""
    if ev.error is not None:
        for v in ev.sides.values():
            v.blame = "reference"
        return
    devices = sorted({d for _, d in ev.sides} | {"cpu"})
    all_sides = [(o, d) for o in oracles.ORACLES for d in devices if not (o == "numeric" and d != "cpu")]
    for s in all_sides:
        if s not in ev.sides:
            ev.sides[s] = judge_side(spec, target, ev, *s)
    classify_kinks(spec, target, ev)
    flag_mutation(target, ev)
    usable = {s: v for s, v in ev.sides.items() if v.status in ("pass", "fail", "kink") and v.result is not None}
    names = list(ev.grads)
    def forward_failed(v):
        return v.kind == "forward" or (v.kind == "nonfinite" and v.phase == "forward")

    # forwards first: the numeric oracle differentiates the target's own forward, so once that forward
    # is out, numeric's verdict follows it
    order = sorted(ev.sides.items(), key=lambda kv: not forward_failed(kv[1]))
    forward_blamed = False
    for s, v in order:
        if v.status != "fail":
            continue
        tri = {f"{o}:{d}": ("skip" if o2.status in ("skip", "error") else
                            "agree" if o2.status in ("pass", "kink") else "disagree")
               for (o, d), o2 in ev.sides.items()}
        others = [o for o in usable if o != s]
        if v.kind == "mutation" or v.pattern == "credit_at_ties":
            # settled by the target alone: it wrote into its inputs, or its choice at a kink is no subgradient
            v.blame = "reference"
        elif forward_failed(v):
            with_out = [o for o in others if usable[o].result.out is not None]
            agree = [o for o in with_out if usable[o].status == "fail" and forward_failed(usable[o])]
            v.blame = ("reference" if with_out and len(agree) == len(with_out)
                       else f"oracle:{s[0]}" if with_out else "unknown")
            forward_blamed |= v.blame == "reference"
        elif s[0] == "numeric" and forward_blamed:
            v.blame = "reference"
            v.message += " (the target's forward already disagrees with the frameworks; its finite differences inherit that)"
        else:
            with_me = [o for o in others if oracles_agree(usable[s].result, usable[o].result, names, ev, s[0], o[0],
                                                spec.tolerance if spec else None)]
            with_ref = [o for o in others if usable[o].status in ("pass", "kink")]
            tri["agree_with_each_other"] = bool(others) and len(with_me) == len(others)
            # a side within its tolerance of both (finite differences resolve ~1e-5, the frameworks
            # ~1e-13) cannot tell the two apart: it does not vote
            voters = [o for o in others if not (o in with_me and o in with_ref)]
            if voters and all(o in with_me for o in voters):
                v.blame = "reference"
            elif voters and all(o in with_ref for o in voters):
                v.blame = f"oracle:{s[0]}"
            elif ev.dtype != "float64" and _closes_in_float64(spec, target, ev, s):
                v.blame = "precision"
            else:
                v.blame = "unknown"
        explain_tf32(ev, s, v)
        v.triangulation = tri


def _closes_in_float64(spec, target, ev, side) -> bool:
    ev64 = evaluate(spec, target, ev.case, "float64", [side], douts=ev.douts)
    return ev64.sides[side].status in ("pass", "kink")


def _save_case(report_dir: Path, cid: str, ev: Evaluation, side: Side) -> dict:
    """The minimal counterexample, with both sides' results, as cases/<id>.npz."""
    cases = Path(report_dir) / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    data = {f"input/{n}": a for n, a in ev.arrays.items()}
    data.update({f"param/{k}": v for k, v in ev.case.params.items() if isinstance(v, np.ndarray)})
    data.update({f"dout/{i}": d for i, d in enumerate(ev.douts)})
    data.update({f"ref/{n}": g for n, g in ev.grads.items()})
    if ev.out is not None:
        for i, o in enumerate(as_tuple(ev.out)):
            data["ref/out" if i == 0 else f"ref/out{i}"] = np.asarray(o)
    v = ev.sides.get(side)
    if v is not None and v.result is not None:
        for n, g in v.result.grads.items():
            if isinstance(g, Projection):
                data[f"oracle/{n}"] = g.values
                data[f"dirs/{n}"] = g.dirs
            else:
                data[f"oracle/{n}"] = g
        if v.result.out is not None:
            for i, o in enumerate(as_tuple(v.result.out)):
                data["oracle/out" if i == 0 else f"oracle/out{i}"] = np.asarray(o)
    meta = {"oracle": side[0], "device": side[1], "dtype": ev.dtype,
            "params": to_jsonable(ev.case.scalar_params()), "arrays": list(ev.arrays),
            "array_params": [k for k, v in ev.case.params.items() if isinstance(v, np.ndarray)]}
    return {"counterexample": f"cases/{cid}.npz", "replay": f"gradaudit replay {cid}",
            "_meta": meta, "_data": data}


def finalize_case(report_dir: Path, rec: dict, extra_meta: dict) -> None:
    """Write the npz of a record built by `_save_case` (kept apart so the meta can name the op)."""
    data = rec.pop("_data", None)
    meta = rec.pop("_meta", None)
    if data is None:
        return
    meta.update(extra_meta)
    data["meta"] = np.array(json.dumps(meta))
    np.savez_compressed(Path(report_dir) / rec["counterexample"], **data)


def run_target_cells(spec: OpSpec | None, target: Target, inputs: Callable[[str], object],
                     regimes: Iterable[str], cfg: RunConfig, sink: RecordSink, *, family="", source="",
                     extra_meta: dict | None = None, on_record=None) -> list[dict]:
    out = []
    for dtype in cfg.dtypes:
        for regime in regimes:
            ids = {cell_id(target, o, d, dtype, regime) for o, d in cfg.sides()}
            if ids <= cfg.done:
                continue
            with breadth(BREADTH.get(cfg.profile, "full")):  # and as they are built
                cases = inputs(regime)
            records = run_group(spec, target, cases, dtype, regime, cfg, _Deferred(sink, cfg, target,
                                extra_meta or {}, regime, on_record), family=family, source=source)
            out.extend(records)
    return out


class _Deferred:
    """Writes the npz before the record line, so a record never points at a missing file."""

    def __init__(self, sink, cfg, target, extra_meta, regime, on_record):
        self.sink, self.cfg, self.target, self.extra, self.regime, self.on_record = \
            sink, cfg, target, extra_meta, regime, on_record

    def write(self, rec):
        finalize_case(self.cfg.report_dir, rec, dict(self.extra, op=self.target.op, target=self.target.name,
                                                     regime=self.regime, id=rec["id"]))
        self.sink.write(rec)
        if self.on_record:
            self.on_record(rec)
