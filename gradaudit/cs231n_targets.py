"""The cs231n functions that need more than a forward/backward pair (gradaudit/cs231n.py): dropout,
whose forward draws its own mask; batchnorm's forward in its test mode and with its running
statistics; assignment 1's linear classifiers, naive and vectorized, with their regularisation
convention read from the loss."""
from __future__ import annotations

import inspect
import re
import zlib
from typing import Any

import numpy as np

from properties.verdict import report_hazard
from ._guard import clean

from .course import Agreement, linear_reg_scale
from .cs231n_base import (AdapterError, Pair, StandingNote, UserCache, all_finite, audit_target, check_finite,
                          unpack)

__all__ = ["PROBE_SEED", "PROBE_SHAPE", "batchnorm_modes_target", "dropout_seed", "dropout_target",
           "linear_classifier_target"]


# -- dropout: the user's forward draws its own mask from dropout_param["seed"] ------------------

PROBE_SHAPE = (64, 64)  # large enough to tell a keep probability p from a drop probability p


def dropout_seed(shape, p) -> int:
    """A deterministic seed per (shape, p): replayable from a saved case without storing it."""
    return zlib.crc32(repr((tuple(int(s) for s in shape), float(p))).encode()) % (2**31)


def dropout_target(pair: Pair, fns, spec, notes):
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


def batchnorm_modes_target(pair: Pair, fns, spec, notes):
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

def linear_classifier_target(pair: Pair, fns, spec, notes):
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
