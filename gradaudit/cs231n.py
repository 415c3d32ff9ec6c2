"""The cs231n dialect: a user's `*_forward(..., *_param)` / `*_backward(dout, cache)` functions
adapted to the catalogue's op contract (docs/op_contract.md), so the catalogue's strategies, kinks
and oracles judge them.

The user's cache is opaque: their forward makes it, their backward gets it back untouched. Loss
functions `loss, dx = f(x, y)` become a Target whose backward is `dx * dout` (dout: the upstream
scalar). Everything the user's code returns is validated here before it goes further, so a
misbehaving function becomes an `error` that names it, the gradient, and expected vs got.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from properties.verdict import CodeUnderTestError

__all__ = ["AdapterError", "BY_TARGET", "Pair", "audit_target", "build_target", "dropout_seed", "functions_in",
           "plan"]


class AdapterError(CodeUnderTestError):
    """The user's function returned something the cs231n convention does not allow."""


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

    @property
    def functions(self) -> tuple[str, ...]:
        return (self.target,) if self.forward is None else (self.forward, self.target)


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
    # checked as batchnorm over the N·H·W positions of each channel: see _spatial_batchnorm_target
    Pair("spatial_batchnorm_backward", "spatial_batchnorm_forward", "batchnorm", None),
)
# cs231n functions with no catalogue op yet: reported as skipped when the file defines them
UNSUPPORTED = {
    "spatial_groupnorm_backward": ("spatial_groupnorm_forward", "no catalogue op for group normalisation yet"),
}
BY_TARGET = {p.target: p for p in PAIRS}


def plan(names: set[str]) -> tuple[list[Pair], list[tuple[str, str]], list[str]]:
    """(pairs to check, (function, why skipped) for half-present pairs, absent pairs)."""
    run, skipped, absent = [], [], []
    for p in PAIRS:
        have = [f for f in p.functions if f in names]
        if len(have) == len(p.functions):
            run.append(p)
        elif have:
            missing = [f for f in p.functions if f not in names]
            skipped.append((p.target, f"{', '.join(missing)} is not defined (only {', '.join(have)} is): "
                                      f"{p.target} skipped"))
        else:
            absent.append(p.target)
    for target, (forward, why) in UNSUPPORTED.items():
        if target in names or forward in names:
            skipped.append((target, f"{target}: {why}; skipped"))
    return run, skipped, absent


# ---- validation of what the user's code returns ----------------------------------------------

def _kind(v) -> str:
    if v is None:
        return "None"
    if isinstance(v, np.ndarray):
        return f"an array {v.dtype}{list(v.shape)}"
    if isinstance(v, (tuple, list)):
        return f"a {type(v).__name__} of {len(v)}"
    return type(v).__name__


def _unpack(fname: str, result, n: int, what: str):
    """`result` must be a tuple/list of n values (named by `what`)."""
    if not isinstance(result, (tuple, list)) or len(result) != n:
        raise AdapterError(f"{fname} returned {_kind(result)}, expected ({what})")
    return tuple(result)


class _Cache:
    """The user's cache, plus whether everything that went into the forward and came out was finite."""

    def __init__(self, user_cache, finite: bool):
        self.user, self.finite = user_cache, finite


def _finite(*xs) -> bool:
    for x in xs:
        for a in (x if isinstance(x, tuple) else (x,)):
            try:
                arr = np.asarray(a)
            except Exception:
                return False
            if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                return False
    return True


def _check_finite(fname: str, grads, names, cache: _Cache, douts):
    """A NaN/Inf gradient although the inputs, dout and the function's own forward are finite is
    not a numerical accident: the function misbehaves."""
    if not cache.finite or not _finite(*douts):
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
    if pair.target == "spatial_batchnorm_backward":
        return _spatial_batchnorm_target(pair, fns, spec)
    if pair.forward is None:
        loss_fn = fns[pair.target]

        def forward(*arrays, **params):
            loss, dx = _unpack(pair.target, loss_fn(*pair.call(dict(zip(names, arrays)), params)), 2, "loss, dx")
            return loss, _Cache(dx, _finite(*arrays, loss))

        def backward(dout, cache):
            dx = cache.user
            if not isinstance(dx, np.ndarray) or dx.dtype.kind != "f":
                return dx  # the runner names it: "grad[x] is NoneType, expected an array of shape ..."
            _check_finite(pair.target, (dx,), names, cache, (dout,))
            return dx * dout  # the loss's gradient, times the upstream scalar

        return audit_target(pair.target, pair.op, forward, backward, spec.forward), spec.inputs

    fwd, bwd = fns[pair.forward], fns[pair.target]
    n_out = pair.outputs
    what = ", ".join([*(f"out{i}" for i in range(n_out))] if n_out > 1 else ["out"]) + ", cache"

    def forward(*arrays, **params):
        res = _unpack(pair.forward, fwd(*pair.call(dict(zip(names, arrays)), params)), n_out + 1, what)
        out = res[:n_out] if n_out > 1 else res[0]
        return out, _Cache(res[n_out], _finite(*arrays, *res[:n_out]))

    def backward(*args):
        *douts, cache = args
        grads = bwd(*douts, cache.user)
        seq = grads if isinstance(grads, (tuple, list)) else (grads,)
        _check_finite(pair.target, seq, names, cache, tuple(douts))
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

    def run(x, p, mode, seed):
        out, cache = _unpack(pair.forward, fwd(x, {"p": p, "mode": mode, "seed": seed}), 2, "out, cache")
        return out, cache

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
        if mode == "train":
            _, err = probe(x.shape, p)
            if err:
                raise AdapterError(err)
        out, cache = run(x, p, mode, dropout_seed(x.shape, p))
        return out, _Cache(cache, _finite(x, out))

    def backward(dout, cache):
        grads = bwd(dout, cache.user)
        _check_finite(pair.target, (grads,), ("x",), cache, (dout,))
        return grads

    return audit_target(pair.target, pair.op, forward, backward, spec.forward), inputs


# -- spatial batchnorm: batchnorm over the N·H·W positions of each channel ----------------------

# rows of the 2-D batchnorm case -> (N, H, W) of the spatial input; H != W, N > 1 where possible
SPATIAL_LAYOUT = {2: (2, 1, 1), 6: (1, 2, 3), 12: (2, 3, 2)}


def _spatial_batchnorm_target(pair: Pair, fns, spec):
    from hypothesis import strategies as st

    from properties.spec import Case
    from properties.strategies import float_arrays

    fwd, bwd = fns[pair.forward], fns[pair.target]

    def to4(a2):
        n, h, w = SPATIAL_LAYOUT[a2.shape[0]]
        return np.ascontiguousarray(a2.reshape(n, h, w, a2.shape[1]).transpose(0, 3, 1, 2))

    def to2(a4):
        a4 = np.asarray(a4)
        return a4.transpose(0, 2, 3, 1).reshape(-1, a4.shape[1])

    def inputs(regime, breadth):
        @st.composite
        def cases(draw):
            rows, c = draw(st.sampled_from(tuple(SPATIAL_LAYOUT))), draw(st.sampled_from((3, 1, 4)))
            return Case({"x": draw(float_arrays((rows, c), regime)), "gamma": draw(float_arrays((c,), "typical")),
                         "beta": draw(float_arrays((c,), "typical"))}, {"eps": 1e-5})
        return cases()

    def forward(x, gamma, beta, *, eps):
        out, cache = _unpack(pair.forward, fwd(to4(x), gamma, beta, {"mode": "train", "eps": eps, "momentum": 0.9}),
                             2, "out, cache")
        if not isinstance(out, np.ndarray) or out.ndim != 4:
            raise AdapterError(f"{pair.forward} returned out = {_kind(out)}, expected an array of shape "
                               f"{list(to4(x).shape)}")
        if out.shape != to4(x).shape:
            raise AdapterError(f"{pair.forward} returned out of shape {list(out.shape)}, expected {list(to4(x).shape)}")
        out2 = to2(out)
        return out2, _Cache(cache, _finite(x, gamma, beta, out2))

    def backward(dout, cache):
        grads = bwd(to4(dout), cache.user)
        if isinstance(grads, (tuple, list)) and len(grads) == 3 and isinstance(grads[0], np.ndarray) \
                and grads[0].ndim == 4:
            grads = (to2(grads[0]), *grads[1:])
        seq = grads if isinstance(grads, (tuple, list)) else (grads,)
        _check_finite(pair.target, seq, ("x", "gamma", "beta"), cache, (dout,))
        return grads

    return audit_target(pair.target, pair.op, forward, backward, spec.forward), inputs


def functions_in(module) -> dict[str, Any]:
    """The callables of a module by name (what the plan looks for)."""
    return {n: v for n, v in vars(module).items() if callable(v)}
