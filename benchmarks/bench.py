"""What does it cost to trust one gradient? gradaudit's check side by side with what users would use instead.

For affine, softmax_cross_entropy, conv2d, lstm and batchnorm at small, medium and large shapes, the
time to verify ONE input (float64, standard-normal values) with:

  gradaudit_s       properties.evaluate.evaluate on one case with the sides torch, jax and numeric:
                    the code path of `gradaudit run` (private copies, reference forward + backward,
                    three oracles, forward and gradient comparisons, kinks, mutation check), in a
                    process set up as `gradaudit run` sets up its own (session.prepare_process). The
                    JAX compile for the shapes happens in a warm-up call and is reported apart
                    (`jax_compile_s`): a run pays it once per (op, shapes, dtype).
  gradcheck_s       torch.autograd.gradcheck, slow mode (the full numerical and analytical Jacobians)
  gradcheck_fast_s  and fast_mode=True, on the same NumPy forward/backward wrapped in a
                    torch.autograd.Function (the documented way to gradcheck a NumPy backward).
  cs231n_numeric_s  eval_numerical_gradient_array-style central differences over every element of
                    every input (2 forwards per element), as in the cs231n notebooks.
  raw_compute_s     the reference forward + backward plus one VJP per oracle (torch autograd, the
                    compiled JAX VJP, the numeric oracle's finite differences), with no harness.

gradaudit, raw compute and fast gradcheck are timed interleaved, round by round (the median is
reported), so that the load of a shared machine falls on all three alike. Slow gradcheck and the
cs231n check are measured at small and medium shapes; at large shapes, where they would run for
minutes to hours (slow gradcheck's dense Jacobian alone would need tens of GB), they are
extrapolated from measured unit costs and listed under the case's `estimated`: the cs231n figure
from the per-element cost (uniform, so close), the slow-gradcheck one as a lower bound (forward
pairs and backwards only, not the dense Jacobians).

Also: `examples_per_s` per op (a ci-profile run of that op, both dtypes, in this process),
`jit_cache_hit_rate` (oracles.jax_oracle.cache_stats over a ci-profile run of the whole catalogue,
as `gradaudit run` records it in run.json) and `ci_profile_s` (wall time of `gradaudit run
--profile ci` of the whole catalogue in a fresh process, imports included).

    python benchmarks/bench.py --quick --json     # < 3 minutes
    python benchmarks/bench.py                    # more repeats, larger budgets
    python benchmarks/bench.py --cold-cache       # the ci run with an empty JAX compilation cache
    python benchmarks/bench.py --fuzz --json      # fuzzing throughput (benchmarks/bench_fuzz.py)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OPS = ("affine", "softmax_cross_entropy", "conv2d", "lstm", "batchnorm")
SIZES = ("small", "medium", "large")


def make_case(op: str, size: str, rng: np.random.Generator):
    """(Case, shape description) for one benchmark input, float64 masters."""
    from properties.spec import Case

    n = rng.standard_normal
    if op == "affine":
        N, dims, M = {"small": (2, (3,), 4), "medium": (32, (8, 16), 64), "large": (128, (16, 32), 256)}[size]
        D = int(np.prod(dims))
        return Case({"x": n((N, *dims)), "w": n((D, M)) / np.sqrt(D), "b": n(M)}), {"x": [N, *dims], "w": [D, M]}
    if op == "softmax_cross_entropy":
        N, C = {"small": (3, 5), "medium": (64, 100), "large": (512, 1000)}[size]
        return Case({"x": n((N, C))}, {"y": rng.integers(0, C, N)}), {"x": [N, C]}
    if op == "conv2d":
        (N, C, H, W), (F, HH, WW), stride, pad = {
            "small": ((1, 2, 5, 6), (2, 3, 2), 1, 1),
            "medium": ((2, 3, 16, 12), (4, 3, 3), 1, 1),
            "large": ((4, 8, 32, 28), (16, 3, 3), 1, 1)}[size]
        return (Case({"x": n((N, C, H, W)), "w": n((F, C, HH, WW)) / np.sqrt(C * HH * WW), "b": n(F)},
                     {"stride": stride, "pad": pad}),
                {"x": [N, C, H, W], "w": [F, C, HH, WW], "stride": stride, "pad": pad})
    if op == "lstm":
        N, T, D, H = {"small": (2, 3, 4, 3), "medium": (4, 8, 16, 12), "large": (16, 20, 64, 48)}[size]
        s = 1 / np.sqrt(D + H)
        return (Case({"x": n((N, T, D)), "h0": n((N, H)) * 0.5, "wx": n((D, 4 * H)) * s,
                      "wh": n((H, 4 * H)) * s, "b": n(4 * H) * 0.1}),
                {"x": [N, T, D], "h0": [N, H], "wx": [D, 4 * H]})
    if op == "batchnorm":
        N, D = {"small": (4, 3), "medium": (64, 32), "large": (256, 512)}[size]
        return Case({"x": n((N, D)) * 2 + 1, "gamma": n(D), "beta": n(D)}, {"eps": 1e-5}), {"x": [N, D]}
    raise ValueError(op)


def median_time(fn, *, repeats: int, budget: float) -> float:
    """Median wall time of fn(), at least 1 and at most `repeats` runs, fewer when over `budget` s."""
    times = []
    t_start = time.perf_counter()
    while len(times) < repeats:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - t_start > budget:
            break
    return statistics.median(times)


# --- the baselines ---------------------------------------------------------------------------------

def numpy_function(spec, params):
    """The reference pair as a torch.autograd.Function (torch's documented recipe for NumPy code)."""
    import torch

    class NumpyOp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            out, cache = spec.forward(*(t.detach().numpy() for t in inputs), **params)
            ctx.cache = cache
            return torch.from_numpy(np.array(out, dtype=np.float64))

        @staticmethod
        def backward(ctx, dout):
            grads = spec.backward(dout.detach().numpy().copy(), ctx.cache)
            grads = grads if isinstance(grads, (tuple, list)) else (grads,)
            return tuple(torch.from_numpy(np.ascontiguousarray(g)) for g in grads)

    return NumpyOp.apply


def eval_numerical_gradient_array(f, x, df, h=1e-5, limit=None):
    """cs231n's gradient_check.eval_numerical_gradient_array: central differences, every element
    (only the first `limit` elements when timing a sample)."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    done = 0
    while not it.finished and (limit is None or done < limit):
        ix = it.multi_index
        oldval = x[ix]
        x[ix] = oldval + h
        pos = f(x).copy()
        x[ix] = oldval - h
        neg = f(x).copy()
        x[ix] = oldval
        grad[ix] = np.sum((pos - neg) * df) / (2 * h)
        it.iternext()
        done += 1
    return grad


def _cs231n_f(spec, case, arrays, name):
    names = list(arrays)

    def f(x):
        kw = dict(arrays, **{name: x})
        return np.asarray(spec.forward(*(kw[k] for k in names), **case.params)[0])
    return f


def cs231n_check(spec, case, dout):
    """dx_num, dw_num, ... for every input, as the notebooks do before comparing with rel_error."""
    arrays = {k: v.copy() for k, v in case.arrays.items()}
    return {name: eval_numerical_gradient_array(_cs231n_f(spec, case, arrays, name), arrays[name], dout)
            for name in arrays}


def time_cs231n(spec, case, dout, budget, repeats, must_measure):
    """Seconds for the full check, or its extrapolation from 10 elements per input when that is over
    budget (2 forwards per element, a uniform cost: the estimate is close)."""
    estimate = 0.0
    for name, a in case.arrays.items():
        k = min(a.size, 10)
        arrays = {n: v.copy() for n, v in case.arrays.items()}
        t0 = time.perf_counter()
        eval_numerical_gradient_array(_cs231n_f(spec, case, arrays, name), arrays[name], dout, limit=k)
        estimate += (time.perf_counter() - t0) / k * a.size
    if estimate > budget and not must_measure:
        return estimate, True
    return median_time(lambda: cs231n_check(spec, case, dout), repeats=repeats, budget=budget), False


def time_gradcheck_slow(spec, case, budget, must_measure):
    """Slow mode builds both full Jacobians: the numerical one with a forward pair per input element,
    the analytical one with a backward per output element. Where that is over budget: a LOWER bound
    from those unit costs (it leaves out filling and comparing the dense n_in x n_out Jacobians)."""
    import torch

    fn = numpy_function(spec, case.params)
    inputs = tuple(torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in case.arrays.values())
    if not must_measure:
        out = fn(*inputs)
        t_fwd = median_time(lambda: fn(*inputs), repeats=5, budget=1.0)

        def one_backward():
            o = fn(*inputs)
            torch.autograd.grad(o, inputs, torch.ones_like(o))
        t_bwd = max(median_time(one_backward, repeats=5, budget=1.0) - t_fwd, 0.0)
        estimate = 2 * sum(a.size for a in case.arrays.values()) * t_fwd + out.numel() * t_bwd
        if estimate > budget:
            return estimate, True
    t0 = time.perf_counter()
    ok = torch.autograd.gradcheck(fn, inputs, raise_exception=False)
    elapsed = time.perf_counter() - t0
    if not ok:
        print(f"  note: slow gradcheck reported a mismatch for {spec.name}", file=sys.stderr)
    return elapsed, False


def gradcheck_fast(spec, case):
    import torch

    fn = numpy_function(spec, case.params)
    inputs = tuple(torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in case.arrays.values())

    def run():
        if not torch.autograd.gradcheck(fn, inputs, fast_mode=True, raise_exception=False):
            print(f"  note: fast gradcheck reported a mismatch for {spec.name}", file=sys.stderr)
    return run


def raw_compute(spec, case, dout):
    """Reference forward + backward, then one VJP per oracle with nothing around it."""
    import torch

    from oracles import jax_oracle, numeric, torch_ops
    from properties.target import Target

    target = Target.reference(spec)
    names = list(case.arrays)
    arrays = [case.arrays[n] for n in names]
    static = tuple(sorted((k, v) for k, v in case.params.items() if not isinstance(v, np.ndarray)))
    array_params = {k: v for k, v in case.params.items() if isinstance(v, np.ndarray)}
    compiled = jax_oracle._compiled(jax_oracle.builtin(spec.name), static)  # the oracle's jitted VJP, unwrapped
    tfn = getattr(torch_ops, spec.name)
    tkw = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in case.params.items()}
    tdout = torch.from_numpy(dout)

    def run():
        out, cache = spec.forward(*arrays, **case.params)
        spec.backward(dout, cache)
        ts = [torch.tensor(a, requires_grad=True) for a in arrays]
        o = tfn(*ts, **tkw)
        [g.numpy() for g in torch.autograd.grad(o, ts, tdout)]
        o_j, g_j = compiled(tuple(arrays), array_params, (dout,))
        np.asarray(o_j), [np.asarray(g) for g in g_j]
        # the work gradaudit's check does: frameworks agreeing, finite differences corroborate
        numeric.vjp(target.oracle_forward("numeric"), dict(zip(names, arrays)), case.params, (dout,),
                    dtype="float64", device="cpu", directions=numeric.CORROBORATING_DIRECTIONS)

    run()  # warm: the gradaudit warm-up compiled the JAX executable for these shapes already
    return run


def generation_time(case, rounds=20) -> float:
    """Seconds Hypothesis takes to draw one case of these shapes through properties.strategies (the
    catalogue's path: element-wise draws for tiny arrays, a drawn seed for larger ones) and a dout seed."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from properties.strategies import float_arrays

    strat = st.fixed_dictionaries({n: float_arrays(a.shape, "typical") for n, a in case.arrays.items()})
    count = [0]

    @settings(max_examples=rounds, database=None, deadline=None, derandomize=True)
    @given(arrays=strat, dout_seed=st.integers(0, 2**16))
    def draw(arrays, dout_seed):
        count[0] += 1

    t0 = time.perf_counter()
    draw()
    return (time.perf_counter() - t0) / max(count[0], 1)


def bench_case(op, size, args, rng):
    from properties import catalogue
    from properties.evaluate import evaluate
    from properties.target import Target

    spec = catalogue.load()[op]
    case, shape = make_case(op, size, rng)
    target = Target.reference(spec)
    sides = [("torch", "cpu"), ("jax", "cpu"), ("numeric", "cpu")]
    # warm-up: the JAX compile for these shapes, paid once per (op, shapes, dtype) in a run
    t0 = time.perf_counter()
    ev = evaluate(spec, target, case, "float64", sides, dout_seed=1)
    first = time.perf_counter() - t0
    bad = {f"{o}:{d}": v.message for (o, d), v in ev.sides.items() if v.status not in ("pass", "kink")}
    if bad:
        print(f"  note: {op} {size}: {bad}", file=sys.stderr)
    dout = ev.douts[0]
    contenders = {"gradaudit_s": lambda: evaluate(spec, target, case, "float64", sides, dout_seed=1),
                  "raw_compute_s": raw_compute(spec, case, dout),
                  "gradcheck_fast_s": gradcheck_fast(spec, case)}
    times = {k: [] for k in contenders}
    t_start = time.perf_counter()
    while True:
        for k, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
        n = len(times["gradaudit_s"])
        if n >= args.repeats or (n >= 3 and time.perf_counter() - t_start > args.budget):
            break
    row = {"op": op, "size": size, "shape": shape}
    row.update({k: statistics.median(v) for k, v in times.items()})
    must = size != "large"  # the targets are at medium shapes: measured there, never estimated
    row["gradcheck_s"], slow_est = time_gradcheck_slow(spec, case, args.budget, must)
    row["cs231n_numeric_s"], cs_est = time_cs231n(spec, case, dout, args.budget, 1 if args.quick else 3, must)
    row["jax_compile_s"] = max(first - row["gradaudit_s"], 0.0)
    row["hypothesis_generation_s"] = generation_time(case)
    row["elements"] = int(sum(a.size for a in case.arrays.values()))
    row["repeats"] = n
    est = [k for k, e in (("gradcheck_s", slow_est), ("cs231n_numeric_s", cs_est)) if e]
    if est:
        row["estimated"] = est
    return row


def examples_per_s(ops, report_dir: Path) -> dict:
    """A short ci-profile run of each op (both dtypes) in this process: examples checked per second,
    JAX compiles included (served by the persistent compilation cache when it is warm)."""
    from properties.config import RunConfig
    from properties.session import catalogue_jobs
    from reports.records import RecordSink

    out = {}
    cfg = RunConfig(profile="ci", report_dir=report_dir)
    with RecordSink(report_dir / "results.jsonl") as sink:
        for op in ops:
            t0 = time.perf_counter()
            n = sum(r["examples"] for _, job in catalogue_jobs([op], cfg.dtypes) for r in job(sink, cfg)
                    if r["oracle"] == "torch")
            out[op] = round(n / (time.perf_counter() - t0), 1)
    return out


def ci_profile(report_dir: Path, workers: int = 1, jax_cache: str | None = None) -> dict:
    """`gradaudit run --profile ci` of the whole catalogue in a fresh process: wall time, and the JAX
    cache figures it records in run.json."""
    env = dict(os.environ)
    env.pop("CI", None)
    if jax_cache is not None:
        env["GRADAUDIT_JAX_CACHE"] = jax_cache
    cmd = [sys.executable, "-m", "gradaudit", "run", "--profile", "ci", "--report", str(report_dir), "--json",
           "--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    try:
        meta = json.loads((report_dir / "run.json").read_text())
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return {"wall_s": wall, "exit": proc.returncode, "error": proc.stderr[-2000:], "hit_rate": None}
    stats = meta.get("jax_cache") or {}
    # examples per second of each op in this run: its groups' wall time (the records' `seconds`
    # add up to it) and the examples each group checked (one side's count: all sides see each example)
    seconds, examples = {}, {}
    for line in (report_dir / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        seconds[r["op"]] = seconds.get(r["op"], 0.0) + (r.get("seconds") or 0.0)
        if r["oracle"] == "torch":
            examples[r["op"]] = examples.get(r["op"], 0) + r["examples"]
    eps = {op: round(examples.get(op, 0) / t, 1) for op, t in seconds.items() if t > 0}
    return {"wall_s": round(wall, 2), "duration_s": meta.get("duration_s"), "exit": proc.returncode,
            "workers": workers, "counts": summary.get("counts"), "hit_rate": stats.get("hit_rate"),
            "jax_cache": stats, "examples_per_s": eps}


def machine() -> dict:
    import hypothesis

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
           "hypothesis": hypothesis.__version__, "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}
    for mod in ("torch", "jax"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small budgets: finishes in under 3 minutes")
    p.add_argument("--json", action="store_true", help="print one JSON object (the table goes to stderr)")
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument("--no-ci", action="store_true", help="skip the whole-catalogue ci-profile run")
    p.add_argument("--workers", type=int, default=1, help="--workers of the ci-profile run (default 1)")
    p.add_argument("--cold-cache", action="store_true",
                   help="run the ci profile with an empty JAX compilation cache (every shape compiled)")
    p.add_argument("--functions", action="store_true",
                   help="only the gradaudit.function section (benchmarks/bench_functions.py): examples/functions/ "
                        "against gradcheck and check_grads")
    p.add_argument("--fuzz", action="store_true",
                   help="only the fuzzing throughput (benchmarks/bench_fuzz.py): verified inputs/s at small shapes")
    p.add_argument("--campaign", type=float, default=0.0, metavar="S",
                   help="with --fuzz: also a `gradaudit fuzz --seconds S` campaign over the ops")
    p.add_argument("--planted", action="store_true",
                   help="with --fuzz: also the time fuzzing takes to find each of tests/planted.py's wrong derivations")
    args = p.parse_args(argv)
    args.repeats = 5 if args.quick else 25
    if args.fuzz:
        from bench_fuzz import main as fuzz_main

        args.ops_given = "--ops" in (argv if argv is not None else sys.argv)
        result = fuzz_main(args, log=sys.stderr if args.json else sys.stdout)
        if args.json:
            print(json.dumps(result))
        return 0
    args.budget = 3.0 if args.quick else 60.0
    if args.functions:
        from bench_functions import main as functions_main

        result = functions_main(args, log=sys.stderr if args.json else sys.stdout)
        if args.json:
            print(json.dumps(result))
        return 0
    ops = [o for o in args.ops.split(",") if o]
    sizes = [s for s in args.sizes.split(",") if s]

    t_start = time.perf_counter()
    info = machine()
    from properties.config import RunConfig
    from properties.session import apply_precision, prepare_process

    info["prepared"] = prepare_process()  # as `gradaudit run` does: one torch thread, the JAX cache
    apply_precision(RunConfig())
    rng = np.random.default_rng(0)
    cases = []
    log = sys.stderr if args.json else sys.stdout
    print(f"{'op':<22} {'size':<7} {'gradaudit':>10} {'raw':>10} {'ratio':>6} {'gc slow':>10} {'gc fast':>10} "
          f"{'cs231n':>10} {'slow/ga':>8} {'fast/ga':>8} {'gen':>8}", file=log)
    for op in ops:
        for size in sizes:
            row = bench_case(op, size, args, rng)
            cases.append(row)
            est = row.get("estimated", [])
            mark = lambda k: "~" if k in est else " "  # noqa: E731
            print(f"{op:<22} {size:<7} {row['gradaudit_s'] * 1e3:8.2f}ms {row['raw_compute_s'] * 1e3:8.2f}ms "
                  f"{row['gradaudit_s'] / row['raw_compute_s']:6.2f} {mark('gradcheck_s')}{row['gradcheck_s']:8.3f}s "
                  f"{row['gradcheck_fast_s'] * 1e3:8.2f}ms {mark('cs231n_numeric_s')}{row['cs231n_numeric_s']:8.3f}s "
                  f"{row['gradcheck_s'] / row['gradaudit_s']:8.0f} {row['gradcheck_fast_s'] / row['gradaudit_s']:8.2f} "
                  f"{row['hypothesis_generation_s'] * 1e3:6.2f}ms", file=log, flush=True)
    with tempfile.TemporaryDirectory(prefix="gradaudit-bench-") as tmp:
        ci = None
        if not args.no_ci:
            cold = str(Path(tmp) / "jax-cache") if args.cold_cache else None
            ci = ci_profile(Path(tmp) / "ci", workers=args.workers, jax_cache=cold)
            print(f"ci profile, whole catalogue: {ci['wall_s']} s wall, exit {ci['exit']}, {ci.get('counts')}; "
                  f"JAX: {ci.get('jax_cache')}", file=log)
        if ci is not None and ci.get("examples_per_s"):
            eps = ci["examples_per_s"]  # every op's rate in the whole-catalogue ci run
        else:
            eps = examples_per_s(ops, Path(tmp) / "eps")
        print("examples/s (ci profile, per op): " + ", ".join(f"{op} {eps[op]}" for op in ops if op in eps),
              file=log, flush=True)
    result = {"cases": cases, "examples_per_s": eps,
              "jit_cache_hit_rate": None if ci is None else ci["hit_rate"],
              "ci_profile_s": None if ci is None else ci["wall_s"],
              "ci_profile": ci, "machine": info, "quick": args.quick,
              "bench_s": round(time.perf_counter() - t_start, 1)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"benchmark took {result['bench_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
