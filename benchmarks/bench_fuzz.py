"""Fuzzing throughput (`python benchmarks/bench.py --fuzz`): verified inputs per second at small shapes.

For each op, ONE small float64 case (standard-normal values, sides torch, jax and numeric), and value
sets of its shapes drawn as a fuzzing campaign draws them (properties.fuzz_batch.draw_value_sets):

  batched_per_s     properties.fuzz_batch.BatchCheck.run on K value sets per call (K as a campaign
                    settles it: properties.fuzz.batch_size of the measured cost), in this process
  single_per_s      the same loop with one value set per call: properties.evaluate.evaluate on each
                    (the per-example check the batch's verdict equals: finite differences along one
                    random direction per input, torch and JAX element by element)
  run_check_per_s   the per-example check of `gradaudit run` (finite differences over every element
                    at these sizes), for comparison
  fast_mode_per_s   torch.autograd.gradcheck(fast_mode=True) on the same input (bench.gradcheck_fast)
  batched_per_s_workers   with --workers N: N processes running the batched loop at the same time
                    (their rates summed): the machine's throughput

JAX compiles (once per shape and K) happen in a warm-up and are not timed; the whole campaign's rate,
compiles, Hypothesis and the records included, is `campaign` (`gradaudit fuzz`, with --campaign S).
With --planted: how long fuzzing takes to find each wrong derivation of tests/planted.py (`planted`).
Rates are medians of interleaved rounds; the load average is recorded before and after.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FUZZ_OPS = ("relu", "sigmoid", "tanh", "affine", "softmax", "log_softmax", "softmax_cross_entropy", "conv2d",
            "max_pool2d", "avg_pool2d", "rnn", "lstm")


def small_case(op: str):
    """One small case of `op` (bench.make_case's small size where it has one)."""
    from bench import make_case

    from properties.spec import Case

    rng = np.random.default_rng(0)
    n = rng.standard_normal
    if op in ("affine", "softmax_cross_entropy", "conv2d", "lstm"):
        return make_case(op, "small", rng)[0]
    if op in ("relu", "sigmoid", "tanh"):
        return Case({"x": n((2, 3))})
    if op in ("softmax", "log_softmax"):
        return Case({"x": n((3, 5))})
    if op in ("max_pool2d", "avg_pool2d"):
        return Case({"x": n((1, 2, 5, 6))}, {"pool_height": 2, "pool_width": 3, "stride": 2})
    if op == "rnn":
        N, T, D, H = 2, 3, 4, 3
        return Case({"x": n((N, T, D)), "h0": n((N, H)), "wx": n((D, H)) / 2, "wh": n((H, H)) / 2, "b": n(H)})
    raise ValueError(op)


def _setup(op: str):
    from properties import catalogue
    from properties.fuzz import K_MIN, batch_size
    from properties.fuzz_batch import BatchCheck, draw_value_sets
    from properties.target import Target

    spec = catalogue.load()[op]
    case = small_case(op)
    check = BatchCheck(spec, Target.reference(spec), "float64", [("torch", "cpu"), ("jax", "cpu"), ("numeric", "cpu")])
    origins = {n: ("typical", 1.0) for n in case.arrays}
    probe = draw_value_sets(case, origins, 1, 0, K_MIN)
    k = batch_size(min(check.cost(probe) for _ in range(2)))  # as a campaign's group chooses it
    draws = [draw_value_sets(case, origins, 1, seed, k) for seed in range(1, 4)]
    check.run(draws[0])  # the compile for K value sets
    return spec, case, check, draws, k


def _batched_rate(check, draws, seconds: float) -> float:
    done, t0, i = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds or done == 0:
        res = check.run(draws[i % len(draws)])
        assert res.failure is None, res.failure
        done, i = done + len(draws[0]), i + 1
    return done / (time.perf_counter() - t0)


def _worker(ops, starts, seconds):
    """One process of the --workers measurement: each op's batched loop from its start time on."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from properties.session import prepare_process

    prepare_process()
    out = {}
    for op, start in zip(ops, starts):
        _, _, check, draws, _ = _setup(op)
        time.sleep(max(0.0, start - time.time()))
        out[op] = _batched_rate(check, draws, seconds)
    return out


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _campaign(ops, seconds: float, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="gradaudit-fuzz-bench-") as tmp:
        cmd = [sys.executable, "-m", "gradaudit", "fuzz", "--ops", ",".join(ops), "--seconds", str(seconds),
               "--dtypes", "float64", "--workers", str(workers), "--report", tmp, "--json", "-q"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        rates = json.loads((Path(tmp) / "fuzz.json").read_text())["rates"] if (Path(tmp) / "fuzz.json").exists() \
            else {}
    return {"command": " ".join(cmd[1:]), "exit": proc.returncode, "wall_s": round(wall, 1), "rates": rates}


def planted_times(repeats: int = 3) -> dict:
    """Seconds of fuzzing until each wrong derivation of tests/planted.py is found (the search's own
    clock: from the group's start, Hypothesis and JAX compiles included; median of `repeats` runs with
    different seeds). The groups of an op's regimes run in their order, one second at most each, as a
    campaign splits its time: the time is the finding group's, with the earlier groups' listed apart."""
    sys.path.insert(0, str(ROOT / "tests"))
    from planted import PLANTED

    from properties import catalogue
    from properties.config import RunConfig
    from properties.fuzz import FuzzGroup
    from properties.target import Target

    out = {}
    for name, (op, forward, backward, what) in PLANTED.items():
        spec = catalogue.load()[op]
        target = Target(backward.__name__, op, forward, backward)
        runs = []
        for seed in range(repeats):
            cfg = RunConfig(profile="dev", dtypes=("float64",), seed=seed, report_dir=Path(tempfile.gettempdir()))
            before = 0.0
            for regime in spec.regimes:
                group = FuzzGroup(spec, target, "float64", regime, cfg)
                group.run(1.0)
                if group.finding is not None or ("in place" in what and group.hazards):
                    runs.append((group.finding[1] if group.finding else group.seconds, regime, before))
                    break
                before += group.seconds
            else:
                runs.append((None, None, before))
        found = [r for r in runs if r[0] is not None]
        out[name] = {"op": op, "found": f"{len(found)}/{repeats}",
                     "seconds": round(statistics.median(r[0] for r in found), 3) if found else None,
                     "worst_s": round(max(r[0] for r in found), 3) if found else None,
                     "regime": found[0][1] if found else None,
                     "earlier_regimes_s": round(statistics.median(r[2] for r in runs), 2)}
    return out


def main(args, log=sys.stdout) -> dict:
    from bench import gradcheck_fast

    from properties.session import prepare_process

    prepare_process()
    ops = [o for o in (args.ops.split(",") if args.ops_given else FUZZ_OPS) if o]
    seconds = 1.0 if args.quick else 3.0
    rounds = 3 if args.quick else 5
    result, load = {}, [_load()]
    print(f"{'op':<22} {'K':>4} {'batched/s':>10} {'single/s':>9} {'run/s':>7} {'fast_mode/s':>11}", file=log)
    for op in ops:
        spec, case, check, draws, k = _setup(op)
        sets = [vs for d in draws for vs in d]
        fast = gradcheck_fast(spec, case)
        fast()
        from properties.evaluate import evaluate
        from properties.target import Target

        ordinary = Target.reference(spec)
        rates = {"batched": [], "single": [], "run": [], "fast": []}
        for r in range(rounds):  # interleaved, so that the load falls on all alike
            rates["batched"].append(_batched_rate(check, draws, seconds / 2))
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 4 or n == 0:
                check.exact(sets[n % len(sets)])
                n += 1
            rates["single"].append(n / (time.perf_counter() - t0))
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 8 or n == 0:
                vs = sets[n % len(sets)]
                evaluate(spec, ordinary, vs.case, "float64", check.sides, dout_seed=vs.dout_seed)
                n += 1
            rates["run"].append(n / (time.perf_counter() - t0))
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 8 or n == 0:
                fast()
                n += 1
            rates["fast"].append(n / (time.perf_counter() - t0))
        med = {key: round(statistics.median(v), 1) for key, v in rates.items()}
        result[op] = {"size": "small", "shapes": case.shapes(), "k": k, "batched_per_s": med["batched"],
                      "single_per_s": med["single"], "run_check_per_s": med["run"], "fast_mode_per_s": med["fast"]}
        print(f"{op:<22} {k:>4} {med['batched']:>10,.0f} {med['single']:>9,.0f} {med['run']:>7,.0f} "
              f"{med['fast']:>11,.0f}", file=log, flush=True)
    load.append(_load())
    out = {"fuzz": result}
    if args.workers > 1:
        slot = seconds + 12.0  # each op: its warm-up (setup, compiles) in the slack, then `seconds` timed
        t0 = time.time() + 25.0  # the workers' start-up (imports)
        starts = [t0 + i * slot for i in range(len(ops))]
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(args.workers) as pool:
            per = pool.starmap(_worker, [(ops, starts, seconds)] * args.workers)
        for op in ops:
            result[op]["batched_per_s_workers"] = round(sum(p[op] for p in per), 1)
            result[op]["workers"] = args.workers
            print(f"{op:<22} {args.workers} processes: {result[op]['batched_per_s_workers']:,.0f}/s", file=log)
        load.append(_load())
    if args.campaign:
        out["campaign"] = _campaign(ops, args.campaign, args.workers)
        print(f"campaign: {out['campaign']['command']}: exit {out['campaign']['exit']}, "
              f"{out['campaign']['wall_s']} s; per op: " + ", ".join(
                  f"{op} {r['per_s']}/s" for op, r in out["campaign"]["rates"].items()), file=log)
        load.append(_load())
    if args.planted:
        out["planted"] = planted_times()
        for name, r in out["planted"].items():
            print(f"{name:<60} found {r['found']} in {r['seconds']} s (worst {r['worst_s']} s; {r['regime']})", file=log)
        load.append(_load())
    out["load_average"] = load
    return out
