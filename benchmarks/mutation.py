"""Kill rates of gradient checkers on the same wrong backwards.

The mutants `gradaudit mutate` makes of the catalogue's reference backwards and of
examples/cs231n/layers_correct.py (gradaudit/mutants.py), judged by:

  gradaudit        gradaudit's check in the ci profile (both dtypes; torch, JAX and float64 finite
                   differences; every value regime; Hypothesis-drawn shapes), as `gradaudit mutate` runs it
  gradcheck        torch.autograd.gradcheck (slow mode: the full numerical and analytical Jacobians) on
  gradcheck_fast   and fast_mode=True, the NumPy forward/backward wrapped in a torch.autograd.Function
                   whose backward calls the NumPy backward (the documented way to gradcheck one)
  check_grads      jax.test_util.check_grads(f, args, order=1, modes=["rev"]) on a jax.custom_vjp whose
                   fwd/bwd call the NumPy forward/backward through jax.pure_callback (float64)
  cs231n           the notebook check: rel_error(eval_numerical_gradient_array(...), analytic) < 1e-7
                   for every input, on one fixed random input of the assignment's shapes
  cs231n_sparse    grad_check_sparse at 10 random coordinates of every input, same threshold

The one-input tools get one fixed input per op, float64: the assignment's shapes and values where the
op is a cs231n layer, else standard-normal values at small distinct sizes (USER_CASES); an op added to
the catalogue later gets its rich ci geometry with standard-normal values.

A tool kills a mutant when it reports a failure or raises on it (an exception in a check is a
failure a user sees), and only counts where it passes the unmutated original (a tool that fails the
original says nothing about its mutants: those are left out of that tool's total). Totals are over
the mutants that compute another gradient than the original (equivalent and invalid ones are left
out, as in `gradaudit mutate`); a mutant of a function several ops share (`_scatter_windows`) is
killed when any of its ops' checks kills it.

    python benchmarks/mutation.py --quick --json     # a fixed subset: a few minutes on 2 cores
    python benchmarks/mutation.py --json --workers 2 # every mutant of the catalogue and the example
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

TOOLS = ("gradaudit", "gradcheck", "gradcheck_fast", "check_grads", "cs231n", "cs231n_sparse")
THRESHOLD = 1e-7  # the cs231n checks' pass mark (the notebooks ask for errors "around 1e-7 or less")
EXAMPLE = ROOT / "examples" / "cs231n" / "layers_correct.py"

# --quick: these catalogue ops and example functions, at most QUICK_PER mutants per (function, operator)
QUICK_OPS = ("affine", "relu", "softmax_cross_entropy", "svm_hinge", "batchnorm", "max_pool2d", "rnn_step",
             "lstm_step")
QUICK_FUNCTIONS = ("affine_backward", "relu_backward", "softmax_loss", "svm_loss", "batchnorm_backward_alt",
                   "max_pool_backward_naive", "rnn_step_backward", "lstm_step_backward")
QUICK_PER = 1


# ---- the inputs a user gives a one-input check ------------------------------------------------

def _n(rng, *shape, scale=1.0, shift=0.0):
    return scale * rng.standard_normal(shape) + shift


def _labels(rng, classes, *shape):
    return rng.integers(0, classes, size=shape)


# The cs231n notebooks' shapes and values (assignment 1: softmax/svm; assignment 2: FullyConnectedNets,
# BatchNormalization, Dropout, ConvolutionalNetworks; assignment 3: RNN_Captioning, LSTM_Captioning),
# in the catalogue's layout: (arrays in the op's order, params).
USER_CASES = {
    "affine": lambda r: ({"x": _n(r, 10, 2, 3), "w": _n(r, 6, 5), "b": _n(r, 5)}, {}),
    "relu": lambda r: ({"x": _n(r, 10, 10)}, {}),
    "softmax_cross_entropy": lambda r: ({"x": _n(r, 50, 10, scale=0.001)}, {"y": _labels(r, 10, 50)}),
    "svm_hinge": lambda r: ({"x": _n(r, 50, 10, scale=0.001)}, {"y": _labels(r, 10, 50)}),
    "batchnorm": lambda r: ({"x": _n(r, 4, 5, scale=5, shift=12), "gamma": _n(r, 5), "beta": _n(r, 5)},
                           {"eps": 1e-5}),
    "layernorm": lambda r: ({"x": _n(r, 4, 5, scale=5, shift=12), "gamma": _n(r, 5), "beta": _n(r, 5)},
                           {"eps": 1e-5}),
    "dropout": lambda r: ({"x": _n(r, 10, 10, shift=10)},
                          {"p": 0.2, "mode": "train", "mask": (r.random((10, 10)) < 0.2).astype(float)}),
    "conv2d": lambda r: ({"x": _n(r, 4, 3, 5, 5), "w": _n(r, 2, 3, 3, 3), "b": _n(r, 2)}, {"stride": 1, "pad": 1}),
    "max_pool2d": lambda r: ({"x": _n(r, 3, 2, 8, 8)}, {"pool_height": 2, "pool_width": 2, "stride": 2}),
    "avg_pool2d": lambda r: ({"x": _n(r, 3, 2, 8, 8)}, {"pool_height": 2, "pool_width": 2, "stride": 2}),
    "rnn_step": lambda r: ({"x": _n(r, 4, 5), "prev_h": _n(r, 4, 6), "wx": _n(r, 5, 6), "wh": _n(r, 6, 6),
                            "b": _n(r, 6)}, {}),
    "rnn": lambda r: ({"x": _n(r, 2, 10, 3), "h0": _n(r, 2, 5), "wx": _n(r, 3, 5), "wh": _n(r, 5, 5),
                       "b": _n(r, 5)}, {}),
    "lstm_step": lambda r: ({"x": _n(r, 4, 5), "prev_h": _n(r, 4, 6), "prev_c": _n(r, 4, 6), "wx": _n(r, 5, 24),
                             "wh": _n(r, 6, 24), "b": _n(r, 24)}, {}),
    "lstm": lambda r: ({"x": _n(r, 2, 10, 3), "h0": _n(r, 2, 6), "wx": _n(r, 3, 24), "wh": _n(r, 6, 24),
                        "b": _n(r, 24)}, {}),
    "embedding": lambda r: ({"w": _n(r, 5, 6)}, {"idx": _labels(r, 5, 50, 3)}),
    "temporal_affine": lambda r: ({"x": _n(r, 2, 3, 4), "w": _n(r, 4, 5), "b": _n(r, 5)}, {}),
    "temporal_softmax_loss": lambda r: ({"x": _n(r, 7, 8, 9, scale=0.01)},
                                        {"y": _labels(r, 9, 7, 8), "mask": r.random((7, 8)) > 0.5}),
    # assignment 1's two-layer net toy model (N, D, H, C = 5, 4, 10, 3; weights std 0.1, zero biases, reg 0.05)
    "two_layer_net": lambda r: ({"x": _n(r, 5, 4, scale=10), "w1": _n(r, 4, 10, scale=0.1), "b1": np.zeros(10),
                                 "w2": _n(r, 10, 3, scale=0.1), "b2": np.zeros(3)},
                                {"y": np.array([0, 1, 2, 2, 1]), "reg": 0.05}),
    # the catalogue's other ops have no notebook: standard-normal values at small, distinct sizes
    "sigmoid": lambda r: ({"x": _n(r, 10, 10)}, {}),
    "tanh": lambda r: ({"x": _n(r, 10, 10)}, {}),
    "softmax": lambda r: ({"x": _n(r, 5, 10)}, {}),
    "log_softmax": lambda r: ({"x": _n(r, 5, 10)}, {}),
    "mse": lambda r: ({"a": _n(r, 4, 5)}, {"y": _n(r, 4, 5)}),
    "add_gate": lambda r: ({"x": _n(r, 3, 4), "y": _n(r, 3, 4)}, {}),
    "multiply_gate": lambda r: ({"x": _n(r, 3, 4), "y": _n(r, 3, 4)}, {}),
    "max_gate": lambda r: ({"x": _n(r, 3, 4), "y": _n(r, 3, 4)}, {}),
    "sigmoid_neuron": lambda r: ({"w": _n(r, 3), "x": _n(r, 5, 2)}, {}),
    "chain_rule_example": lambda r: ({"x": _n(r, 3, 4), "y": _n(r, 3, 4), "z": _n(r, 3, 4)}, {}),
    "linear_column": lambda r: ({"w": _n(r, 5, 6), "x": _n(r, 6, 10), "b": _n(r, 5, 1)}, {}),
    "l2_regularization": lambda r: ({"w": _n(r, 6, 5)}, {"reg": np.asarray(0.1)}),
    "rnn_softmax_sequence": lambda r: ({"x": _n(r, 2, 3, 4), "h0": _n(r, 2, 5), "wx": _n(r, 4, 5), "wh": _n(r, 5, 5),
                                        "b": _n(r, 5), "v": _n(r, 5, 6), "c": _n(r, 6)}, {"y": _labels(r, 6, 2, 3)}),
    "mlp_sigmoid_mse": lambda r: ({"x": _n(r, 5, 4), "w1": _n(r, 4, 6), "b1": _n(r, 6), "w2": _n(r, 6, 3),
                                   "b2": _n(r, 3)}, {"y": r.random((5, 3))}),
    "spatial_batchnorm": lambda r: ({"x": _n(r, 2, 3, 4, 5, scale=4, shift=10), "gamma": _n(r, 3), "beta": _n(r, 3)},
                                    {"eps": 1e-5}),
    "spatial_groupnorm": lambda r: ({"x": _n(r, 2, 6, 4, 5, scale=4, shift=10), "gamma": _n(r, 1, 6, 1, 1),
                                     "beta": _n(r, 1, 6, 1, 1)}, {"G": 2, "eps": 1e-5}),
    # batchnorm_forward's train mode with its running statistics (the BatchNormalization notebook's)
    "batchnorm_running": lambda r: ({"x": _n(r, 4, 5, scale=5, shift=12), "gamma": _n(r, 5), "beta": _n(r, 5)},
                                    {"running_mean": _n(r, 5), "running_var": r.random(5) + 0.5,
                                     "momentum": np.asarray(0.9), "eps": 1e-5}),
}


def user_case(subj):
    """(arrays, params) for the one-input tools, the same on every call for a given judge."""
    from properties.spec import Case

    rng = np.random.default_rng(231)
    make = USER_CASES.get(subj.judge) or USER_CASES.get(subj.op)
    if make is None:  # an op added to the catalogue since: its rich ci geometry, standard-normal values
        return _rich_case(subj, rng)
    arrays, params = make(rng)
    if subj.kind == "cs231n" and subj.op == "dropout":
        params = dict(params, mask=None)  # the user's forward draws its own mask from the seed
    return Case({n: arrays[n] for n in subj.array_names}, params)


def _rich_case(subj, rng):
    from properties.spec import Case

    from gradaudit.mutant_probe import draw_cases

    drawn = [c for regime, br, c, _ in draw_cases(subj, 8, 0) if regime == "typical"]
    case = max(drawn, key=lambda c: sum(a.size for a in c.arrays.values()))
    # Hypothesis's derandomized draws start from simple values (zeros): a user types randn
    return Case({n: rng.standard_normal(a.shape) for n, a in case.arrays.items()}, case.params)


# ---- the cs231n checks (they mirror cs231n's gradient_check.py and layers' rel_error) ----------

def rel_error(x, y):
    """As in the cs231n notebooks: max |x - y| / max(1e-8, |x| + |y|)."""
    return float(np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y))))


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """As cs231n's gradient_check.py: central differences of an array-valued f, contracted with df,
    element by element, perturbing x in place."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        oldval = x[ix]
        x[ix] = oldval + h
        pos = f(x).copy()
        x[ix] = oldval - h
        neg = f(x).copy()
        x[ix] = oldval
        grad[ix] = np.sum((pos - neg) * df) / (2 * h)
        it.iternext()
    return grad


def grad_check_sparse(f, x, analytic_grad, num_checks=10, h=1e-5):
    """As cs231n's gradient_check.py: a scalar f at `num_checks` random coordinates; returns the
    relative errors it would print."""
    errors = []
    for _ in range(num_checks):
        ix = tuple(random.randrange(m) for m in x.shape)
        oldval = x[ix]
        x[ix] = oldval + h
        fxph = f(x)
        x[ix] = oldval - h
        fxmh = f(x)
        x[ix] = oldval
        grad_numerical = (fxph - fxmh) / (2 * h)
        grad_analytic = analytic_grad[ix]
        with np.errstate(all="ignore"):
            errors.append(abs(grad_numerical - grad_analytic) / (abs(grad_numerical) + abs(grad_analytic)))
    return errors


def _outs(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _forward_fn(target, case, k):
    """x_k -> the forward's outputs, every other input and the params fixed (the notebook's lambdas)."""
    names = list(case.arrays)

    def f(xk):
        arrays = [xk if i == k else case.arrays[n] for i, n in enumerate(names)]
        return tuple(np.asarray(o, dtype=np.float64) for o in _outs(target.forward(*arrays, **case.params)[0]))
    return f


def cs231n_check(target, case, douts):
    """The notebook: dx_num = eval_numerical_gradient_array(lambda x: f(x, ...)[0], x, dout) for each
    input, then `_, cache = f(...)`, `dx, dw, ... = f_backward(dout, cache)`, rel_error < 1e-7."""
    nums = []
    for k, n in enumerate(case.arrays):
        f = _forward_fn(target, case, k)
        x = np.array(case.arrays[n], dtype=np.float64)
        nums.append(sum(eval_numerical_gradient_array(lambda a, i=i: f(a)[i], x, d) for i, d in enumerate(douts)))
    _, cache = target.forward(*case.arrays.values(), **case.params)
    grads = _outs(target.backward(*douts, cache))
    errs = [rel_error(num, np.asarray(g, dtype=np.float64)) for num, g in zip(nums, grads)]
    return max(errs) < THRESHOLD, f"max rel_error {max(errs):.2g}"


def cs231n_sparse_check(target, case, douts):
    """grad_check_sparse on f(x) = Σ forward(x) · dout (the loss itself for a loss), every input."""
    _, cache = target.forward(*case.arrays.values(), **case.params)
    grads = _outs(target.backward(*[np.array(d, copy=True) for d in douts], cache))
    random.seed(231)
    worst = 0.0
    for k, n in enumerate(case.arrays):
        f = _forward_fn(target, case, k)
        scalar = lambda a: float(sum(np.sum(o * d) for o, d in zip(f(a), douts)))  # noqa: E731
        x = np.array(case.arrays[n], dtype=np.float64)
        errs = [e for e in grad_check_sparse(scalar, x, np.asarray(grads[k], dtype=np.float64)) if np.isfinite(e)]
        worst = max([worst] + errs)
    return worst < THRESHOLD, f"max rel error {worst:.2g}"


# ---- torch.autograd.gradcheck and jax check_grads on the NumPy pair --------------------------

def torch_function(target, params, n_out):
    import torch

    class NumpyOp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *xs):
            out, cache = target.forward(*[x.detach().numpy() for x in xs], **params)
            ctx.cache = cache
            outs = tuple(torch.from_numpy(np.array(o, dtype=np.float64)) for o in _outs(out))
            return outs if n_out > 1 else outs[0]

        @staticmethod
        def backward(ctx, *gs):
            grads = target.backward(*[g.detach().numpy() for g in gs], ctx.cache)
            return tuple(torch.from_numpy(np.array(g, dtype=np.float64)) for g in _outs(grads))

    return NumpyOp.apply


def gradcheck_tool(target, case, n_out, fast):
    import torch

    xs = tuple(torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in case.arrays.values())
    ok = torch.autograd.gradcheck(torch_function(target, case.params, n_out), xs, fast_mode=fast,
                                  raise_exception=False)
    return bool(ok), "gradcheck returned " + str(bool(ok))


def jax_function(target, params, outs0, shapes_in):
    import jax

    n_in, n_out = len(shapes_in), len(outs0)
    out_structs = tuple(jax.ShapeDtypeStruct(np.shape(o), np.float64) for o in outs0)
    in_structs = tuple(jax.ShapeDtypeStruct(s, np.float64) for s in shapes_in)

    def fwd_np(*xs):
        out, _ = target.forward(*[np.asarray(x) for x in xs], **params)
        return tuple(np.asarray(o, dtype=np.float64) for o in _outs(out))

    def bwd_np(*args):
        out, cache = target.forward(*[np.asarray(x) for x in args[:n_in]], **params)
        grads = target.backward(*[np.asarray(g) for g in args[n_in:]], cache)
        return tuple(np.asarray(g, dtype=np.float64) for g in _outs(grads))

    @jax.custom_vjp
    def f(*xs):
        r = jax.pure_callback(fwd_np, out_structs, *xs)
        return r if n_out > 1 else r[0]

    def f_fwd(*xs):
        return f(*xs), xs

    def f_bwd(res, g):
        gs = g if n_out > 1 else (g,)
        return tuple(jax.pure_callback(bwd_np, in_structs, *res, *gs))

    f.defvjp(f_fwd, f_bwd)
    return f


def check_grads_tool(target, case, outs0):
    import jax
    from jax.test_util import check_grads

    jax.config.update("jax_enable_x64", True)
    f = jax_function(target, case.params, outs0, [a.shape for a in case.arrays.values()])
    check_grads(f, tuple(jax.numpy.asarray(a) for a in case.arrays.values()), order=1, modes=["rev"])
    return True, "check_grads passed"


# ---- the extra judge `gradaudit mutate` calls in its child, per mutant and op -------------------

def judge(mut, orig) -> dict:
    """{tool: {"killed", "seconds", "note"}} for the mutant `mut` (a Subject: target, spec, ...) of
    the original `orig`, plus "input": does the mutant differ from the original on the tools' input?"""
    from gradaudit.mutant_probe import difference, run_side

    case = user_case(orig)
    with np.errstate(all="ignore"):
        out0, cache0 = orig.target.forward(*[np.array(a) for a in case.arrays.values()], **case.params)
    outs0 = _outs(out0)
    rng = np.random.default_rng(7)
    douts = tuple(np.asarray(rng.standard_normal(np.shape(o))) for o in outs0)
    result = {}
    tools = {
        "gradcheck": lambda: gradcheck_tool(mut.target, case, len(outs0), fast=False),
        "gradcheck_fast": lambda: gradcheck_tool(mut.target, case, len(outs0), fast=True),
        "check_grads": lambda: check_grads_tool(mut.target, case, outs0),
        "cs231n": lambda: cs231n_check(mut.target, case, tuple(np.array(d) for d in douts)),
        "cs231n_sparse": lambda: cs231n_sparse_check(mut.target, case, douts),
    }
    for name, run in tools.items():
        t0 = time.perf_counter()
        try:
            with np.errstate(all="ignore"), contextlib.redirect_stdout(io.StringIO()):
                ok, note = run()
        except Exception as e:  # noqa: BLE001  a check that raises is a failure its user sees
            ok, note = False, f"raised {type(e).__name__}: {str(e)[:200]}"
        result[name] = {"killed": not ok, "seconds": round(time.perf_counter() - t0, 4), "note": note}
    # where the mutant stands on this input: the reason a one-input tool can or cannot see it
    try:
        with np.errstate(all="ignore"):
            o0, g0, w0, _ = run_side(orig, case, douts)
            o1, g1, w1, _ = run_side(mut, case, douts)
        bad, rel, which = difference(g0 + o0, g1 + o1, 1.0)
        result["input"] = {"differs": bool(bad or which), "rel": rel, "written": bool(w1 and not w0),
                           "geometry": ", ".join(f"{n}{tuple(a.shape)}" for n, a in case.arrays.items())}
    except Exception as e:  # noqa: BLE001
        result["input"] = {"differs": True, "rel": float("inf"), "error": f"{type(e).__name__}: {e}"[:200]}
    return result


# ---- the benchmark ----------------------------------------------------------------------------

def _quick(plan, functions=None):
    """QUICK_PER mutants per (function, operator), each judged by its own function's op only (the
    full run also judges a step backward by the sequence op that calls it)."""
    seen: dict = {}
    keep = []
    for m, judges, mod in plan.mutants:
        if functions is not None and m.function not in functions:
            continue
        key = (m.function, m.operator)
        if seen.get(key, 0) < QUICK_PER:
            seen[key] = seen.get(key, 0) + 1
            own = [j for j in judges if j == m.function or f"{j}_backward" == m.function] or judges[:1]
            keep.append((m, own, mod))
    plan.mutants = keep
    return plan


def tally(report: dict) -> dict:
    raw = report["raw"]
    originals = {}
    for rid, r in raw.items():
        if rid.startswith("original:"):
            for j, v in r.get("judges", {}).items():
                originals[j] = v
    false_alarm = {t: sorted(j for j, v in originals.items() if v.get("extra", {}).get(t, {}).get("killed"))
                   for t in TOOLS if t != "gradaudit"}
    false_alarm["gradaudit"] = sorted(report["originals_failing"])
    tools = {t: {"killed": 0, "total": 0, "equivalent": report["equivalent"], "seconds": 0.0,
                 "false_alarms_on_originals": false_alarm[t]} for t in TOOLS}
    by_operator: dict = {}
    disagreements = []
    for m in report["results"]:
        res = raw.get(m["id"], {})
        judges = res.get("judges", {})
        for t in TOOLS:
            if t == "gradaudit":
                tools[t]["seconds"] += sum((v.get("check") or {}).get("seconds", 0) for v in judges.values())
            else:
                tools[t]["seconds"] += sum((v.get("extra") or {}).get(t, {}).get("seconds", 0) for v in judges.values())
        if m["status"] not in ("killed", "survived"):
            continue
        verdict, judged = {}, {}
        for t in TOOLS:
            if t == "gradaudit":
                verdict[t], judged[t] = m["status"] == "killed", True
            else:
                # a tool that fails the original op cannot tell its mutants from it: not counted there
                fair = [j for j in judges if j not in false_alarm[t]]
                verdict[t] = any((judges[j].get("extra") or {}).get(t, {}).get("killed") for j in fair)
                judged[t] = bool(fair)
            tools[t]["total"] += int(judged[t])
            tools[t]["killed"] += int(verdict[t])
        row = by_operator.setdefault(m["operator"], {"total": 0, **{t: 0 for t in TOOLS}})
        row["total"] += 1
        for t in TOOLS:
            row[t] += int(verdict[t])
        if len({verdict[t] for t in TOOLS if judged[t]}) > 1:
            inputs = {j: (v.get("extra") or {}).get("input") for j, v in judges.items()}
            notes = {t: {j: (v.get("extra") or {}).get(t, {}).get("note") for j, v in judges.items()}
                     for t in TOOLS if t != "gradaudit"}
            survivor = next((s for s in report["survivors"] if s["id"] == m["id"]), None)
            disagreements.append({"id": m["id"], "subject": report["subject"], "description": m["description"],
                                  "killed_by": [t for t in TOOLS if verdict[t]],
                                  "missed_by": [t for t in TOOLS if judged[t] and not verdict[t]],
                                  "not_judged": [t for t in TOOLS if not judged[t]],
                                  "tools_input": inputs, "notes": notes,
                                  "gradaudit_by": (m.get("by") or {}).get("message"),
                                  "gradaudit_why": survivor["why"] if survivor else None,
                                  "diff": next((mm.diff for mm, _, _ in report["_plan"].mutants if mm.id == m["id"]),
                                               "")})
    for t in TOOLS:
        tools[t]["seconds"] = round(tools[t]["seconds"], 2)
    return {"tools": tools, "by_operator": by_operator, "disagreements": disagreements}


def merge(parts: list[dict]) -> dict:
    out = {"tools": {}, "by_operator": {}, "disagreements": []}
    for p in parts:
        for t, v in p["tools"].items():
            o = out["tools"].setdefault(t, {"killed": 0, "total": 0, "equivalent": 0, "seconds": 0.0,
                                            "false_alarms_on_originals": []})
            for k in ("killed", "total", "equivalent", "seconds"):
                o[k] = round(o[k] + v[k], 2) if k == "seconds" else o[k] + v[k]
            o["false_alarms_on_originals"] += v["false_alarms_on_originals"]
        for op, row in p["by_operator"].items():
            o = out["by_operator"].setdefault(op, {k: 0 for k in row})
            for k, v in row.items():
                o[k] += v
        out["disagreements"] += p["disagreements"]
    for v in out["tools"].values():
        v["kill_rate"] = round(v["killed"] / v["total"], 4) if v["total"] else None
    return out


def markdown(out: dict) -> str:
    """The tables of docs/mutation.md from a saved result (--out)."""
    lines = ["| tool | killed | of | kill rate | seconds (sum over mutants) | false alarms on originals |",
             "|---|---:|---:|---:|---:|---|"]
    for t, v in out["tools"].items():
        rate = f"{100 * v['kill_rate']:.1f} %" if v["kill_rate"] is not None else "n/a"
        lines.append(f"| {t} | {v['killed']} | {v['total']} | {rate} | {v['seconds']:.1f} | "
                     f"{', '.join(v['false_alarms_on_originals']) or 'none'} |")
    lines += ["", "| operator | mutants | " + " | ".join(TOOLS) + " |", "|---|---:|" + "---:|" * len(TOOLS)]
    for op, row in sorted(out["by_operator"].items()):
        lines.append(f"| {op} | {row['total']} | " + " | ".join(str(row[t]) for t in TOOLS) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"ops {','.join(QUICK_OPS)} and the same example "
                                                         f"functions, {QUICK_PER} mutant per (function, operator)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="also write the full result (with every disagreement) here")
    ap.add_argument("--table", type=Path, default=None, help="print the markdown tables of a saved --out file and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return 0

    from gradaudit import mutate
    from properties import catalogue

    t0 = time.perf_counter()
    ops = list(QUICK_OPS) if args.quick else list(catalogue.load())
    plans = [mutate.plan_ops(ops, None, None), mutate.plan_file(EXAMPLE, "cs231n", None, None)]
    if args.quick:
        plans = [_quick(plans[0]), _quick(plans[1], set(QUICK_FUNCTIONS))]
    parts, summary = [], {}
    for plan in plans:
        report = mutate.run(plan, workers=args.workers, raw=True, extra=[f"{Path(__file__).resolve()}:judge"])
        report["_plan"] = plan
        parts.append(tally(report))
        # gradaudit's own view of the subject: the `gradaudit mutate` report (survivors explained)
        summary[plan.label] = {k: v for k, v in report.items() if k not in ("raw", "results", "_plan")}
    out = merge(parts)
    out["subjects"] = summary
    out["quick"] = args.quick
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1, default=str))
    brief = {k: v for k, v in out.items() if k not in ("disagreements", "subjects")}
    brief["subjects"] = {label: {k: r[k] for k in ("mutants", "killed", "survived", "equivalent", "invalid", "score",
                                                   "seconds")} for label, r in summary.items()}
    brief["disagreements"] = len(out["disagreements"])
    if args.json:
        print(json.dumps(brief, indent=1, default=str))
    else:
        print(f"{'tool':<15} {'killed':>7} {'total':>6} {'rate':>7} {'seconds':>9}")
        for t, v in out["tools"].items():
            print(f"{t:<15} {v['killed']:>7} {v['total']:>6} {100 * (v['kill_rate'] or 0):>6.1f}% {v['seconds']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
