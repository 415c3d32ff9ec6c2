"""`benchmarks/bench.py --functions`: gradaudit on hand-written framework rules (examples/functions/)
against what their authors use instead, `torch.autograd.gradcheck` and `jax.test_util.check_grads`.

Two tables.

Cost, per verified input (float64, standard-normal values, small and medium shapes), timed
interleaved round by round, the median reported (the load of a shared machine falls on all alike):

  gradaudit_vjp_s   properties.evaluate.evaluate on one case of the subject's `vjp` check, with the sides
                    torch, jax and numeric (a side the subject has no forward for is a skip): the code
                    path of `gradaudit.check` for one drawn input: the rule called directly, its contract
                    checked, autograd of the bypassed primal, the reference in the other framework,
                    finite differences, comparisons, the mutation check. JAX compiles for the shapes
                    happen in a warm-up call, as a run pays them once per (subject, shapes, dtype).
  gradaudit_all_s   the same for every check of the subject (layouts, batched, order 2), summed: one
                    input through everything gradaudit checks.
  gradcheck_fast_s  torch: gradcheck(fast_mode=True);
  gradcheck_s       gradcheck (slow: both dense Jacobians);
  batched_s         gradcheck(check_batched_grad=True) (vmap over the backward: slow mode only);
  gradgrad_fast_s,  order=2 subjects: gradgradcheck(fast_mode=True), and slow;
  gradgrad_s
  check_grads_s     JAX: check_grads(order=1, modes=["rev"]) (its default mode, both, needs forward mode,
                    which a custom_vjp has not); check_grads2_s: order=2 subjects, order=2.

Catches: for each example and its planted twin, whether each tool flags it (the twin must be
flagged, the original must not): gradaudit.check in the ci profile (and its pattern), the torch
modes above, JAX check_grads at order 1 and 2.

Also: the largest `worst_target` (error over the error allowed; 1.0 would fail) of the correct
examples checked in float16 and bfloat16 with the reference-relative tolerance, which is what
properties.tolerances.K_REFERENCE is set against.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "functions"
SIZES = {"small": (3, 5), "medium": (64, 100)}  # (N, features), as bench.py's softmax_cross_entropy
# example file -> (correct subject, planted twin, the pattern the twin plants)
EXAMPLES_ = {"softmax_ce": ("softmax_ce", "softmax_ce_unreduced", "missing_sum"),
             "layernorm": ("layer_norm", "layer_norm_kept", "ctx_intermediate"),
             "logsumexp": ("lse", "lse_f32", "wrong_dtype")}


def _load():
    from gradaudit.audit import import_file

    return {name: import_file(EXAMPLES / f"{name}.py") for name in EXAMPLES_}


def make_case(subject, size: str, rng):
    """One input of the subject at `size`: float64 standard-normal arrays, labels where declared."""
    from properties.spec import Case

    n, d = SIZES[size]
    sizes = {"N": n, "C": d, "D": d}

    def shape(spec):
        return tuple(sizes[s] if isinstance(s, str) else int(s) for s in spec.shape)

    arrays = {}
    for name, spec in subject.arrays.items():
        arrays[name] = (rng.uniform(spec.low, spec.high, shape(spec)) if spec.low is not None
                        else rng.standard_normal(shape(spec)))
    params = {}
    for name, spec in subject.params.items():
        classes = sizes[spec.classes] if isinstance(spec.classes, str) else int(spec.classes)
        params[name] = rng.integers(0, classes, shape(spec))
    return Case(arrays, params)


def _gradaudit(subject, case, checks):
    """A callable that evaluates `case` in each of `checks` (what one drawn input costs gradaudit)."""
    from gradaudit._subject import subject_target
    from gradaudit._subject_run import dout_names, expanded
    from oracles.base import as_tuple
    from properties.evaluate import evaluate
    from properties.spec import Case, OpSpec
    from properties.strategies import upstream

    spec = OpSpec(name=subject.name, family="function", source=subject.name, inputs=subject.inputs,
                  regimes=subject.regimes)
    sides = [("torch", "cpu"), ("jax", "cpu"), ("numeric", "cpu")]
    runs = []
    for check in checks:
        target = subject_target(subject, check)
        c = expanded(case) if check == "vjp_expanded" else case  # as the check's cases are drawn
        if check in ("vjp_of_vjp", "jvp_of_vjp"):
            outs = as_tuple(_forward(subject, case))
            ds = upstream([np.shape(o) for o in outs], 1)
            c = Case({**case.arrays, **dict(zip(dout_names(subject, len(ds)), ds))}, case.params)
        runs.append((check, target, c))

    def run():
        bad = {}
        for check, target, c in runs:
            ev = evaluate(spec, target, c, "float64", sides, dout_seed=1)
            bad.update({f"{check}:{o}": v.message for (o, _), v in ev.sides.items() if v.status not in ("pass", "skip")})
        return bad

    return run


def _forward(subject, case):
    from gradaudit._subject import adapter

    return adapter(subject).numpy_forward()(*case.arrays.values(), **case.params)


def _torch_args(subject, case):
    import torch

    arrays = [torch.tensor(a, requires_grad=True) for a in case.arrays.values()]
    params = {k: torch.as_tensor(v) for k, v in case.params.items()}
    return tuple(subject.assemble(arrays, params))


def _quiet(fn):
    """A gradcheck-style call's verdict: "passes", "FLAGGED" (a reported mismatch) or "raises <Error>"
    (the tool itself failed on the function: not a finding that names anything)."""
    try:
        return "passes" if fn() else "FLAGGED"
    except Exception as e:
        return "FLAGGED" if type(e).__name__ in ("GradcheckError", "AssertionError") else f"raises {type(e).__name__}"


def torch_tools(subject, case, order: int) -> dict:
    """name -> a callable running that tool once on `case`, returning whether it passed."""
    import torch

    f = subject.fn.apply if isinstance(subject.fn, type) else subject.fn
    args = _torch_args(subject, case)
    gc = torch.autograd.gradcheck
    tools = {"gradcheck_fast_s": lambda: _quiet(lambda: gc(f, args, fast_mode=True)),
             "gradcheck_s": lambda: _quiet(lambda: gc(f, args)),
             "batched_s": lambda: _quiet(lambda: gc(f, args, check_batched_grad=True))}
    if order == 2:
        tools["gradgrad_fast_s"] = lambda: _quiet(lambda: torch.autograd.gradgradcheck(f, args, fast_mode=True))
        tools["gradgrad_s"] = lambda: _quiet(lambda: torch.autograd.gradgradcheck(f, args))
    return tools


def jax_tools(subject, case, order: int) -> dict:
    from jax.test_util import check_grads

    def run(k):
        def go():
            check_grads(subject.fn, tuple(case.arrays.values()), order=k, modes=["rev"])
            return True
        return lambda: _quiet(go)

    tools = {"check_grads_s": run(1)}
    if order == 2:
        tools["check_grads2_s"] = run(2)
    return tools


def tools_for(subject, case) -> dict:
    return (torch_tools if subject.framework == "torch" else jax_tools)(subject, case, subject.order)


def cost_row(name, subject, size, args, rng) -> dict:
    case = make_case(subject, size, rng)
    vjp = _gradaudit(subject, case, ("vjp",))
    every = _gradaudit(subject, case, subject.checks)
    bad = every()  # warm-up: the JAX compiles for these shapes
    if bad:
        print(f"  note: {name} {size}: {bad}", file=sys.stderr)
    tools = tools_for(subject, case)
    contenders = {"gradaudit_vjp_s": vjp, "gradaudit_all_s": every}
    fast = ("gradcheck_fast_s", "gradgrad_fast_s", "check_grads_s", "check_grads2_s")
    contenders.update({k: fn for k, fn in tools.items() if k in fast})
    times = {k: [] for k in contenders}
    t_start = time.perf_counter()
    while True:
        for k, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
        n = len(times["gradaudit_vjp_s"])
        if n >= args.repeats or (n >= 3 and time.perf_counter() - t_start > args.budget):
            break
    row = {"subject": name, "framework": subject.framework, "size": size,
           "shapes": {k: list(np.shape(v)) for k, v in case.arrays.items()}, "repeats": n}
    row.update({k: statistics.median(v) for k, v in times.items()})
    # the dense-Jacobian modes, timed once each: at medium shapes minutes apiece (gradgradcheck's
    # Jacobian of the backward is (inputs + douts) x inputs), so there only in a full run, and
    # gradgradcheck's slow mode never
    slow = ("gradcheck_s", "batched_s", "gradgrad_s") if size == "small" else () if args.quick else \
        ("gradcheck_s", "batched_s")
    for k in slow:
        if k in tools:
            t0 = time.perf_counter()
            tools[k]()
            row[k] = time.perf_counter() - t0
    baseline = row.get("gradcheck_fast_s", row.get("check_grads_s"))
    row["gradaudit_vjp_over_fast"] = row["gradaudit_vjp_s"] / baseline
    return row


def catches(mods, rng) -> list[dict]:
    """For each example and its twin: which tool flags it (a twin should be flagged, an original not)."""
    import gradaudit

    rows = []
    for mod_name, (good, bad, pattern) in EXAMPLES_.items():
        for which, attr in (("original", good), ("twin", bad)):
            subject = getattr(mods[mod_name], attr)
            case = make_case(subject, "small", rng)
            row = {"example": mod_name, "subject": attr, "which": which, "planted": pattern if which == "twin" else None}
            with tempfile.TemporaryDirectory(prefix="gradaudit-bench-fn-") as tmp:
                t0 = time.perf_counter()
                recs = gradaudit.check(subject, report=tmp, raise_on_failure=False)
                row["gradaudit_check_s"] = round(time.perf_counter() - t0, 2)
            failing = [r for r in recs if r["status"] in ("fail", "error")]
            row["gradaudit"] = "FLAGGED" if failing else "passes"
            row["gradaudit_pattern"] = sorted({r["pattern"] for r in failing if r["pattern"]})
            row["gradaudit_checks"] = sorted({r["target"].rsplit(".", 1)[1] for r in failing})
            for tool, fn in tools_for(subject, case).items():
                row[tool.removesuffix("_s")] = fn()
            rows.append(row)
    return rows


def low_precision(mods) -> dict:
    """The largest worst_target of the correct examples in float16 and bfloat16 (reference-relative)."""
    import dataclasses

    import gradaudit

    out = {}
    for mod_name, (good, _, _) in EXAMPLES_.items():
        subject = getattr(mods[mod_name], good)
        for dtype in ("float16", "bfloat16"):
            with tempfile.TemporaryDirectory(prefix="gradaudit-bench-lp-") as tmp:
                recs = gradaudit.check(dataclasses.replace(subject, checks=("vjp",)), dtypes=(dtype,), report=tmp,
                                       raise_on_failure=False)
            judged = [r for r in recs if r["status"] != "skip"]
            out[f"{good}:{dtype}"] = {
                "statuses": sorted({r["status"] for r in judged}),
                "modes": sorted({r.get("tolerance_mode") for r in judged}),
                "worst_target": max((r.get("worst_target") or 0.0 for r in judged), default=None)}
    return out


def main(args, log=sys.stdout) -> dict:
    from properties.config import RunConfig
    from properties.session import apply_precision, prepare_process

    prepare_process()
    apply_precision(RunConfig())
    mods = _load()
    rng = np.random.default_rng(0)
    sizes = [s for s in args.sizes.split(",") if s in SIZES] or list(SIZES)
    cols = ["gradaudit_vjp_s", "gradaudit_all_s", "gradcheck_fast_s", "check_grads_s", "gradcheck_s", "batched_s",
            "gradgrad_fast_s", "gradgrad_s", "check_grads2_s"]
    print(f"{'subject':<12} {'size':<7} " + " ".join(f"{c.removesuffix('_s'):>16}" for c in cols)
          + f" {'ga vjp/fast':>12}", file=log)
    rows = []
    for mod_name, (good, _, _) in EXAMPLES_.items():
        subject = getattr(mods[mod_name], good)
        for size in sizes:
            row = cost_row(good, subject, size, args, rng)
            rows.append(row)
            print(f"{good:<12} {size:<7} " + " ".join(f"{row[c] * 1e3:14.2f}ms" if c in row else f"{'-':>16}"
                                                      for c in cols)
                  + f" {row['gradaudit_vjp_over_fast']:12.2f}", file=log, flush=True)
    caught = catches(mods, rng)
    tools = ["gradaudit", "gradcheck_fast", "gradcheck", "batched", "gradgrad_fast", "gradgrad", "check_grads",
             "check_grads2"]
    print(f"\n{'subject':<22} {'planted':<20} " + " ".join(f"{t:>18}" for t in tools), file=log)
    for r in caught:
        cells = []
        for t in tools:
            cells.append(f"{r.get(t, '-'):>18}")
        print(f"{r['subject']:<22} {str(r['planted'] or '(correct)'):<20} " + " ".join(cells)
              + (f"  {r['gradaudit_pattern']}" if r["gradaudit_pattern"] else ""), file=log, flush=True)
    lp = low_precision(mods)
    for k, v in lp.items():
        print(f"{k:<22} {v}", file=log, flush=True)
    return {"cost": rows, "catches": caught, "low_precision": lp}
