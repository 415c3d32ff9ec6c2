"""The cs231n dialect: a user's `*_forward(..., *_param)` / `*_backward(dout, cache)` functions
adapted to the catalogue's op contract (docs/op_contract.md), so the catalogue's strategies, kinks
and oracles judge them.

The user's cache is opaque: their forward makes it, their backward gets it back untouched. Loss
functions `loss, dx = f(x, y)` become a Target whose backward is `dx * dout` (dout: the upstream
scalar). Everything the user's code returns is validated here before it goes further, so a
misbehaving function becomes an `error` that names it, the gradient, and expected vs got.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from properties.verdict import CodeUnderTestError, report_hazard
from ._guard import clean


from .course import Agreement, linear_reg_scale

__all__ = ["AdapterError", "BY_TARGET", "Pair", "StandingNote", "UserCache", "all_finite", "audit_target", "build_target",
           "check_finite", "describe_value", "dropout_seed", "functions_in", "plan", "resolve", "unpack"]


class AdapterError(CodeUnderTestError):
    """The user's function returned something the cs231n convention does not allow."""


class StandingNote(str):
    """A note on a target that every one of its records carries, passing or not (a note is otherwise
    context for a fail or an error): what the check of that target could and could not judge."""

    standing = True


def audit_target(name, op, forward, backward, judge_forward):
    """A user's functions as a Target. The finite differences differentiate the catalogue's reference
    forward (`judge_forward`), not the user's: under audit the user's forward is on trial too, and a
    third judge that inherited its mistakes could not triangulate them."""
    from properties.target import Target

    return Target(name, op, forward, backward, judge_forward=judge_forward)


@dataclass(frozen=True)
class Pair:
    target: str  # reported as the record's `target`: the backward, or the loss function
    forward: str | None  # the user's forward; None for a loss `loss, dx = f(...)`
    op: str  # the catalogue op
    call: Callable | None  # (arrays, params) -> the user's forward's arguments; None: a special adapter
    outputs: int = 1  # arrays the forward returns before its cache
    optional: tuple[str, ...] = ()  # used when the file defines them; the pair is checked without them

    @property
    def required(self) -> tuple[str, ...]:
        return (self.target,) if self.forward is None else (self.forward, self.target)

    @property
    def functions(self) -> tuple[str, ...]:
        return self.required + self.optional


def _a(*names):
    return lambda arrays, params: tuple(arrays[n] for n in names)


PAIRS: tuple[Pair, ...] = (
    Pair("affine_backward", "affine_forward", "affine", _a("x", "w", "b")),
    Pair("relu_backward", "relu_forward", "relu", _a("x")),
    Pair("softmax_loss", None, "softmax_cross_entropy", lambda a, p: (a["x"], p["y"])),
    Pair("svm_loss", None, "svm_hinge", lambda a, p: (a["x"], p["y"])),
    Pair("batchnorm_backward", "batchnorm_forward", "batchnorm",
         lambda a, p: (a["x"], a["gamma"], a["beta"], {"mode": "train", "eps": p["eps"], "momentum": 0.9})),
    Pair("batchnorm_backward_alt", "batchnorm_forward", "batchnorm",
         lambda a, p: (a["x"], a["gamma"], a["beta"], {"mode": "train", "eps": p["eps"], "momentum": 0.9})),
    Pair("layernorm_backward", "layernorm_forward", "layernorm",
         lambda a, p: (a["x"], a["gamma"], a["beta"], {"eps": p["eps"]})),
    Pair("dropout_backward", "dropout_forward", "dropout", None),  # see _dropout_target
    Pair("conv_backward_naive", "conv_forward_naive", "conv2d",
         lambda a, p: (a["x"], a["w"], a["b"], {"stride": p["stride"], "pad": p["pad"]})),
    Pair("max_pool_backward_naive", "max_pool_forward_naive", "max_pool2d",
         lambda a, p: (a["x"], {"pool_height": p["pool_height"], "pool_width": p["pool_width"],
                                "stride": p["stride"]})),
    Pair("rnn_step_backward", "rnn_step_forward", "rnn_step", _a("x", "prev_h", "wx", "wh", "b")),
    Pair("rnn_backward", "rnn_forward", "rnn", _a("x", "h0", "wx", "wh", "b")),
    Pair("lstm_step_backward", "lstm_step_forward", "lstm_step", _a("x", "prev_h", "prev_c", "wx", "wh", "b"),
         outputs=2),
    Pair("lstm_backward", "lstm_forward", "lstm", _a("x", "h0", "wx", "wh", "b")),
    Pair("word_embedding_backward", "word_embedding_forward", "embedding", lambda a, p: (p["idx"], a["w"])),
    Pair("temporal_affine_backward", "temporal_affine_forward", "temporal_affine", _a("x", "w", "b")),
    Pair("temporal_softmax_loss", None, "temporal_softmax_loss", lambda a, p: (a["x"], p["y"], p["mask"])),
    Pair("spatial_batchnorm_backward", "spatial_batchnorm_forward", "spatial_batchnorm",
         lambda a, p: (a["x"], a["gamma"], a["beta"], {"mode": "train", "eps": p["eps"], "momentum": 0.9})),
    Pair("spatial_groupnorm_backward", "spatial_groupnorm_forward", "spatial_groupnorm",
         lambda a, p: (a["x"], a["gamma"], a["beta"], p["G"], {"eps": p["eps"]})),
    # batchnorm_forward's test mode and the running statistics its train mode writes: see
    # _batchnorm_modes_target. (layernorm has no mode: cs231n's ln_param carries eps only.)
    Pair("batchnorm_forward", None, "batchnorm_running", None, optional=("batchnorm_backward",)),
    # assignment 1: `loss, dW = f(W, X, y, reg)`; the optional function is the partner that must agree
    # with it on every example (naive against vectorized): see _linear_classifier_target
    Pair("svm_loss_naive", None, "linear_svm", None, optional=("svm_loss_vectorized",)),
    Pair("svm_loss_vectorized", None, "linear_svm", None, optional=("svm_loss_naive",)),
    Pair("softmax_loss_naive", None, "linear_softmax", None, optional=("softmax_loss_vectorized",)),
    Pair("softmax_loss_vectorized", None, "linear_softmax", None, optional=("softmax_loss_naive",)),
)
# cs231n functions with no catalogue op yet, {backward: (forward, why)}: reported as skipped when
# the file defines them
UNSUPPORTED: dict[str, tuple[str, str]] = {}
BY_TARGET = {p.target: p for p in PAIRS}


def resolve(pair: Pair, names: set[str]) -> Pair:
    """The pair as this file has it: an `*_alt` backward goes with the file's own `*_forward_alt`
    when it defines one (`batchnorm_backward_alt` with `batchnorm_forward_alt`)."""
    alt = f"{pair.forward}_alt" if pair.forward else None
    if pair.target.endswith("_alt") and alt in names:
        return dataclasses.replace(pair, forward=alt)
    return pair


def plan(names: set[str]) -> tuple[list[Pair], list[tuple[str, str]], list[str]]:
    """(pairs to check, (function, why skipped) for half-present pairs, absent pairs)."""
    run, skipped, absent = [], [], []
    for p in (resolve(p, names) for p in PAIRS):
        have = [f for f in p.required if f in names]
        if len(have) == len(p.required):
            run.append(p)
        elif have:
            missing = [f for f in p.required if f not in names]
            skipped.append((p.target, f"{', '.join(missing)} is not defined (only {', '.join(have)} is): "
                                      f"{p.target} skipped"))
        else:
            absent.append(p.target)
    for target, (forward, why) in UNSUPPORTED.items():
        if target in names or forward in names:
            skipped.append((target, f"{target}: {why}; skipped"))
    return run, skipped, absent


# ---- validation of what the user's code returns ----------------------------------------------

def describe_value(v) -> str:
    if v is None:
        return "None"
    if isinstance(v, np.ndarray):
        return f"an array {v.dtype}{list(v.shape)}"
    if isinstance(v, (tuple, list)):
        return f"a {type(v).__name__} of {len(v)}"
    return type(v).__name__


def unpack(fname: str, result, n: int, what: str):
    """`result` must be a tuple/list of n values (named by `what`)."""
    if not isinstance(result, (tuple, list)) or len(result) != n:
        raise AdapterError(f"{fname} returned {describe_value(result)}, expected ({what})")
    return tuple(result)


class UserCache:
    """The user's cache, plus whether everything that went into the forward and came out was finite."""

    def __init__(self, user_cache, finite: bool):
        self.user, self.finite = user_cache, finite


def all_finite(*xs) -> bool:
    for x in xs:
        for a in (x if isinstance(x, tuple) else (x,)):
            try:
                arr = np.asarray(a)
            except Exception:
                return False
            if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                return False
    return True


def check_finite(fname: str, grads, names, cache: UserCache, douts):
    """A NaN/Inf gradient although the inputs, dout and the function's own forward are finite is
    not a numerical accident: the function misbehaves."""
    if not cache.finite or not all_finite(*douts):
        return
    for n, g in zip(names, grads):
        if isinstance(g, np.ndarray) and g.dtype.kind == "f" and not np.isfinite(g).all():
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(g))[0])
            bad = g[idx] if g.ndim else g
            raise AdapterError(f"{fname} returned {bad} in grad[{n}] at index {idx}, expected finite values "
                               f"(the inputs, the upstream gradient and the forward output are all finite)")


# ---- targets ----------------------------------------------------------------------------------

def build_target(pair: Pair, fns: dict[str, Callable], notes: dict[str, str] | None = None):
    """(Target, inputs strategy factory) for one pair. `fns` maps function names to (guarded)
    callables; `notes` receives, by target name, a sentence of context for its verdicts (what the
    dropout probe found)."""
    notes = {} if notes is None else notes
    from properties import catalogue

    spec = catalogue.load()[pair.op]
    names = spec.array_names
    if pair.op == "dropout":
        return _dropout_target(pair, fns, spec, notes)
    if pair.op == "batchnorm_running":
        return _batchnorm_modes_target(pair, fns, spec, notes)
    if pair.op in ("linear_svm", "linear_softmax"):
        return _linear_classifier_target(pair, fns, spec, notes)
    if pair.forward is None:
        loss_fn = fns[pair.target]

        def forward(*arrays, **params):
            loss, dx = unpack(pair.target, loss_fn(*pair.call(dict(zip(names, arrays)), params)), 2, "loss, dx")
            return loss, UserCache(dx, all_finite(*arrays, loss))

        def backward(dout, cache):
            dx = cache.user
            if not isinstance(dx, np.ndarray) or dx.dtype.kind != "f":
                return dx  # the runner names it: "grad[x] is NoneType, expected an array of shape ..."
            check_finite(pair.target, (dx,), names, cache, (dout,))
            return dx * dout  # the loss's gradient, times the upstream scalar

        return audit_target(pair.target, pair.op, forward, backward, spec.forward), spec.inputs

    fwd, bwd = fns[pair.forward], fns[pair.target]
    n_out = pair.outputs
    what = ", ".join([*(f"out{i}" for i in range(n_out))] if n_out > 1 else ["out"]) + ", cache"

    def forward(*arrays, **params):
        res = unpack(pair.forward, fwd(*pair.call(dict(zip(names, arrays)), params)), n_out + 1, what)
        out = res[:n_out] if n_out > 1 else res[0]
        return out, UserCache(res[n_out], all_finite(*arrays, *res[:n_out]))

    def backward(*args):
        *douts, cache = args
        grads = bwd(*douts, cache.user)
        seq = grads if isinstance(grads, (tuple, list)) else (grads,)
        check_finite(pair.target, seq, names, cache, tuple(douts))
        return grads

    return audit_target(pair.target, pair.op, forward, backward, spec.forward), spec.inputs


# -- dropout: the user's forward draws its own mask from dropout_param["seed"] ------------------

PROBE_SHAPE = (64, 64)  # large enough to tell a keep probability p from a drop probability p


def dropout_seed(shape, p) -> int:
    """A deterministic seed per (shape, p): replayable from a saved case without storing it."""
    return zlib.crc32(repr((tuple(int(s) for s in shape), float(p))).encode()) % (2**31)


def _dropout_target(pair: Pair, fns, spec, notes):
    from properties.spec import Case

    fwd, bwd = fns[pair.forward], fns[pair.target]
    probes: dict[tuple, tuple] = {}

    def run(x, p, mode, seed, raw=False):
        # a forward that reads p as the drop probability is called with 1 - p (see drops_with_p)
        p_user = 1 - p if not raw and drops_with_p() else p
        out, cache = unpack(pair.forward, fwd(x, {"p": p_user, "mode": mode, "seed": seed}), 2, "out, cache")
        return out, cache

    def drops_with_p() -> bool:
        """Does the forward read dropout_param['p'] as the probability of DROPPING a unit (keeping 1 - p
        and scaling by 1/(1 - p)), self-consistently? A convention, not a wrong value: decided once, on a
        large input with p = 1/4, where the two conventions differ."""
        if "drops" not in probes:
            probes["drops"] = False
            try:
                a, _ = run(np.ones(PROBE_SHAPE), 0.25, "train", dropout_seed(PROBE_SHAPE, 0.25), raw=True)
                a = np.asarray(a, dtype=np.float64)
            except Exception:  # noqa: BLE001  the check itself calls the forward again and reports what it does
                return False
            if a.shape == PROBE_SHAPE:
                kept = a != 0
                frac, n = float(kept.mean()), kept.size
                probes["drops"] = bool(abs(frac - 0.75) <= 5 * np.sqrt(0.75 * 0.25 / n) and kept.any()
                                       and np.allclose(a[kept], 1 / 0.75))
        return probes["drops"]

    def convention_hazard() -> None:
        if drops_with_p():
            report_hazard("convention", f"{pair.forward} reads dropout_param['p'] as the probability of DROPPING a "
                                        f"unit (it keeps 1 − p and scales by 1/(1 − p)); in cs231n p is the "
                                        f"probability of KEEPING one: its values are judged with p read as 1 − p")

    def probe(shape, p) -> tuple[np.ndarray | None, str | None]:
        """(the user's mask for this shape and p, or None; an error that makes the check impossible)."""
        key = (tuple(shape), float(p))
        if key not in probes:
            err = _whole_forward(p)
            probes[key] = (None, err) if err else (_mask(shape, p), None)
        return probes[key]

    def _mask(shape, p):
        try:
            a, _ = run(np.ones(shape), p, "train", dropout_seed(shape, p))
            a = np.asarray(a, dtype=np.float64)
        except Exception:
            return None  # the check itself calls the forward again and reports what it does
        return np.array(a != 0, dtype=np.float64) if a.shape == tuple(shape) else None  # ndarray even 0-d

    def _whole_forward(p) -> str | None:
        """Once per p, on a large input: does the forward honour the seed, keep a fraction p, scale
        by 1/p? A seed it ignores makes the check impossible (an error); the others are the forward's
        own bugs (a note, and the oracles keep a mask of the right keep probability)."""
        if ("whole", p) in probes:
            return probes[("whole", p)]
        probes[("whole", p)] = None
        try:
            seed = dropout_seed(PROBE_SHAPE, p)
            a, _ = run(np.ones(PROBE_SHAPE), p, "train", seed)
            b, _ = run(np.ones(PROBE_SHAPE), p, "train", seed)
            a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        except Exception:
            return None
        if a.shape != PROBE_SHAPE or b.shape != PROBE_SHAPE:
            return None
        kept = a != 0
        if not np.array_equal(kept, b != 0):
            probes[("whole", p)] = (f"{pair.forward} draws a different mask on every call with the same "
                                    f"dropout_param['seed']: seed the generator with it (np.random.seed(seed))")
            return probes[("whole", p)]
        frac, n = float(kept.mean()), kept.size
        if abs(frac - p) > 5 * np.sqrt(p * (1 - p) / n) + 1e-9:
            notes[pair.target] = (f"{pair.forward} keeps {frac:.0%} of the units with dropout_param['p'] = {p:g}: "
                                  f"in cs231n p is the probability of KEEPING a unit")
        elif kept.any() and not np.allclose(a[kept], 1 / p):
            notes[pair.target] = (f"{pair.forward} scales the units it keeps by {a[kept][0]:.4g}, "
                                  f"expected 1/p = {1 / p:.4g} (inverted dropout)")
        return None

    def with_user_mask(case):
        if case.params["mode"] != "train":
            return case
        mask, err = probe(case.arrays["x"].shape, case.params["p"])
        if mask is None or pair.target in notes:
            return case  # the oracles keep a mask of the right keep probability: the forwards will differ
        return Case(case.arrays, {**case.params, "mask": mask})

    def inputs(regime, breadth):
        return spec.inputs(regime, breadth).map(with_user_mask)

    def forward(x, *, p, mode, mask):
        convention_hazard()
        if mode == "train":
            _, err = probe(x.shape, p)
            if err:
                raise AdapterError(err)
        out, cache = run(x, p, mode, dropout_seed(x.shape, p))
        return out, UserCache(cache, all_finite(x, out))

    def backward(dout, cache):
        grads = bwd(dout, cache.user)
        check_finite(pair.target, (grads,), ("x",), cache, (dout,))
        return grads

    return audit_target(pair.target, pair.op, forward, backward, spec.forward), inputs


# -- batchnorm_forward's test mode and the running statistics of its train mode -----------------
#
# The batchnorm pair checks the train-mode output and batchnorm_backward. This target checks what
# that pair never sees, against the catalogue op batchnorm_running, whose three outputs are
#   out       the test-mode output, bn_param = {"mode": "test", "running_mean", "running_var", "eps"}
#             given the same running statistics as torch's F.batch_norm(training=False);
#   mean, var what a train-mode call on the same batch writes into bn_param["running_mean"] and
#             bn_param["running_var"], against momentum·old + (1 − momentum)·batch statistic.
# A wrong value in any of them is a `forward` fail on batchnorm_forward. cs231n's batchnorm_backward
# assumes train mode (the course never backpropagates through test mode), so the gradient is the
# user's only where their backward handles a test-mode cache (`test_mode_backward` decides, once);
# otherwise the target's gradient is the catalogue's, and its fail and error records say that the
# forward alone was judged.

PROBE_SEED = 231


def _explain_running(x, running_mean, running_var, momentum, written) -> str | None:
    """Which slip, if any, explains the running statistics a train-mode call wrote (a sentence)."""
    # loose: the verdict is the judge's (batchnorm_running's forward against the frameworks); this only
    # names a slip that is far beyond rounding
    loose = 1e-4 if np.asarray(x).dtype == np.float32 else 1e-9
    x = np.asarray(x, dtype=np.float64)
    n, m = x.shape[0], momentum
    old = {"running_mean": np.asarray(running_mean, np.float64), "running_var": np.asarray(running_var, np.float64)}
    batch = {"running_mean": x.mean(axis=0), "running_var": x.var(axis=0)}
    parts = []
    for key, got in zip(("running_mean", "running_var"), written):
        got = np.asarray(got, dtype=np.float64)
        stat = "mean(x)" if key == "running_mean" else "var(x)"
        want = m * old[key] + (1 - m) * batch[key]

        def close(a):
            a = np.asarray(a, np.float64)
            scale = max(1.0, float(np.abs(want).max(initial=0.0)), float(np.abs(x).max(initial=0.0)) ** 2)
            return a.shape == want.shape and bool(np.allclose(got, a, rtol=loose, atol=loose * scale))

        if got.shape != want.shape or not close(want):
            slips = [("still the value passed in (not updated)", old[key]),
                     (f"the batch's {stat} alone (no running average)", batch[key]),
                     (f"(1 − momentum)·{key} + momentum·{stat}: momentum weighs the batch instead of the old value",
                      (1 - m) * old[key] + m * batch[key])]
            if key == "running_var":
                if n > 1:
                    slips.append(("computed with the unbiased variance (ddof=1); cs231n's is the biased one",
                                  m * old[key] + (1 - m) * batch[key] * n / (n - 1)))
                slips.append(("computed with the standard deviation instead of the variance",
                              m * old[key] + (1 - m) * np.sqrt(batch[key])))
            what = next((why for why, value in slips if got.shape == want.shape and close(value)),
                        "none of the usual slips" if got.shape == want.shape else
                        f"of shape {list(got.shape)}, expected {list(want.shape)}")
            if key == "running_var" and n == 1 and np.isnan(got).any():
                what = ("NaN: the unbiased variance (ddof=1) of a batch of one divides by N − 1 = 0; "
                        "cs231n's is the biased one")
            parts.append(f"bn_param['{key}'] after a train-mode call is not momentum·{key} + "
                         f"(1 − momentum)·{stat}{' (biased)' if key == 'running_var' else ''}: it is {what}")
    return "; ".join(parts) or None


def _names_test_mode(fn) -> bool:
    """Does the function's source name the test mode ('test' as a string)?"""
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return False
    return re.search(r"""["']test["']""", source) is not None


def _batchnorm_modes_target(pair: Pair, fns, spec, notes):
    name = pair.target
    fwd, bwd = fns[name], fns.get("batchnorm_backward")
    judge_forward, judge_backward = spec.forward, spec.backward
    state: dict[str, Any] = {}

    def call(x, gamma, beta, mode, running_mean, running_var, momentum, eps):
        bn_param = {"mode": mode, "eps": eps, "momentum": momentum,
                    "running_mean": running_mean.copy(), "running_var": running_var.copy()}
        out, cache = unpack(name, fwd(x, gamma, beta, bn_param), 2, "out, cache")
        return out, cache, bn_param

    def test_mode_backward() -> bool:
        """Is the user's backward judged in test mode? Decided once, on a fixed float64 probe. Yes when
        it returns test mode's gradient (dx = dout·gamma/σ_running), or another without raising while
        its source names the test mode (it means to handle that cache: a wrong test-mode branch is a
        finding). No when it raises on a test-mode cache, or returns another gradient without naming
        the mode: it assumes train mode, as the course's does."""
        if "backward" in state:
            return state["backward"]
        why = None
        if bwd is None:
            why = "is not defined"
        else:
            rng = np.random.default_rng(PROBE_SEED)
            x, gamma, beta, mean, dout = (rng.standard_normal(s) for s in ((4, 3), 3, 3, 3, (4, 3)))
            params = dict(running_mean=mean, running_var=rng.uniform(0.5, 2.0, 3), momentum=0.9, eps=1e-5)
            try:
                _, cache, _ = call(x, gamma, beta, "test", **params)
            except Exception:  # noqa: BLE001  every example calls it again and reports what it does
                cache, why = None, "could not be tried: batchnorm_forward fails in test mode"
            if why is None:
                try:
                    got = unpack("batchnorm_backward", bwd(dout, cache), 3, "dx, dgamma, dbeta")
                    _, ref_cache = judge_forward(x, gamma, beta, **params)
                    want = judge_backward(dout, np.zeros(3), np.zeros(3), ref_cache)
                    if not _names_test_mode(bwd) and not all(
                            np.shape(g) == np.shape(w) and np.allclose(np.asarray(g, np.float64), w, rtol=1e-6, atol=1e-9)
                            for g, w in zip(got, want)):
                        why = "gives another gradient than test mode's on a test-mode cache"
                except Exception as e:  # noqa: BLE001  the user's code, on a cache it need not expect
                    raised = str(e).removeprefix("batchnorm_backward raised ")
                    why = f"fails on a test-mode cache ({clean(raised, 160)})"
        state["backward"] = why is None
        state["note"] = StandingNote(
            "test mode: batchnorm_forward's output and batchnorm_backward's gradient judged" if why is None
            else f"test mode: batchnorm_forward's output judged, not the gradient; batchnorm_backward "
                 f"{why}" + ("" if bwd is None else " and assumes train mode, as the course's does"))
        notes[name] = state["note"]
        return state["backward"]

    def forward(x, gamma, beta, *, running_mean, running_var, momentum, eps):
        test_mode_backward()
        m = float(momentum)
        # copies: a train-mode call that writes into x must not change the test-mode input (the batchnorm
        # pair reports such writes); the test-mode call gets the harness's own arrays, for the same check
        _, _, trained = call(x.copy(), gamma.copy(), beta.copy(), "train", running_mean, running_var, m, eps)
        written = []
        for key in ("running_mean", "running_var"):
            if key not in trained:
                raise AdapterError(f"{name} in train mode removed bn_param[{key!r}]: cs231n keeps the running "
                                   f"statistics there for test mode")
            written.append(np.asarray(trained[key]))
        slip = _explain_running(x, running_mean, running_var, m, written)
        if slip:
            notes[name] = StandingNote(f"{slip}; {state['note']}")
        out, cache, _ = call(x, gamma, beta, "test", running_mean, running_var, m, eps)
        _, ref_cache = judge_forward(x, gamma, beta, running_mean=running_mean, running_var=running_var,
                                     momentum=momentum, eps=eps)
        return (out, *written), UserCache((cache, ref_cache), all_finite(x, gamma, beta, out, *written))

    def backward(dout, dmean, dvar, cache):
        user_cache, ref_cache = cache.user
        if not state["backward"]:
            return judge_backward(dout, dmean, dvar, ref_cache)
        grads = bwd(dout, user_cache)
        seq = grads if isinstance(grads, (tuple, list)) else (grads,)
        check_finite("batchnorm_backward", seq, ("x", "gamma", "beta"), cache, (dout,))
        if len(seq) == 3 and isinstance(seq[0], np.ndarray) and seq[0].shape == dout.shape:
            # the running statistics' share of dx: no user function computes it
            stats_dx = judge_backward(np.zeros_like(dout), dmean, dvar, ref_cache)[0]
            return (seq[0] + stats_dx, *seq[1:])
        return grads  # malformed: the runner names it

    return audit_target(name, pair.op, forward, backward, spec.forward), spec.inputs


# -- assignment 1's linear classifiers: `loss, dW = f(W, X, y, reg)` ----------------------------

def _linear_classifier_target(pair: Pair, fns, spec, notes):
    """The loss adapter, with the user's regularisation convention and its partner's agreement
    (gradaudit/course.py)."""
    from properties.spec import Case

    fn = fns[pair.target]
    reg_scale, convention = linear_reg_scale(pair.target, fn)
    if convention:
        notes[pair.target] = convention
    partner_name = pair.optional[0] if pair.optional else None
    partner = fns.get(partner_name) if partner_name else None
    agreement = Agreement(pair.target, partner_name, partner, notes, convention) if partner is not None else None

    def forward(W, *, X, y, reg, reg_scale):
        originals = (W.copy(), X.copy(), y.copy())  # the partner gets them even if fn writes into its own
        loss, dW = unpack(pair.target, fn(W, X, y, reg), 2, "loss, dW")
        if agreement is not None:
            agreement.check(*originals, reg, reg_scale, loss, dW)
        return loss, UserCache(dW, all_finite(W, X, loss))

    def backward(dout, cache):
        dW = cache.user
        if not isinstance(dW, np.ndarray) or dW.dtype.kind != "f":
            return dW  # the runner names it: "grad[W] is NoneType, expected an array of shape ..."
        check_finite(pair.target, (dW,), ("W",), cache, (dout,))
        return dW * dout  # the loss's gradient, times the upstream scalar

    def inputs(regime, breadth):  # the convention the user's loss has, not the catalogue's draw
        return spec.inputs(regime, breadth).map(lambda c: Case(c.arrays, {**c.params, "reg_scale": reg_scale}))

    target = audit_target(pair.target, pair.op, forward, backward, spec.forward)
    if agreement is not None:
        agreement.target = target
    return target, inputs


def functions_in(module) -> dict[str, Any]:
    """The callables of a module by name (what the plan looks for)."""
    return {n: v for n, v in vars(module).items() if callable(v)}
