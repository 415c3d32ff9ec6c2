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
from typing import Any, Callable

import numpy as np

from .cs231n_base import (AdapterError, Pair, StandingNote, UserCache, all_finite, audit_target, check_finite,
                          describe_value, unpack)
from .cs231n_targets import batchnorm_modes_target, dropout_seed, dropout_target, linear_classifier_target

__all__ = ["AdapterError", "BY_TARGET", "Pair", "StandingNote", "UserCache", "all_finite", "audit_target", "build_target",
           "check_finite", "describe_value", "dropout_seed", "functions_in", "plan", "resolve", "unpack"]


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
    Pair("dropout_backward", "dropout_forward", "dropout", None),  # see dropout_target
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
    # batchnorm_modes_target. (layernorm has no mode: cs231n's ln_param carries eps only.)
    Pair("batchnorm_forward", None, "batchnorm_running", None, optional=("batchnorm_backward",)),
    # assignment 1: `loss, dW = f(W, X, y, reg)`; the optional function is the partner that must agree
    # with it on every example (naive against vectorized): see linear_classifier_target
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


def plan(names: set[str], functions: dict[str, Callable] | None = None
         ) -> tuple[list[Pair], list[tuple[str, str]], list[str]]:
    """(pairs to check, (function, why skipped) for half-present pairs, absent pairs). With
    `functions`, a backward whose forward is missing is checked when its cache can be built from
    how it unpacks it (gradaudit/cache_inference.py)."""
    run, skipped, absent = [], [], []
    for p in (resolve(p, names) for p in PAIRS):
        have = [f for f in p.required if f in names]
        if len(have) == len(p.required):
            run.append(p)
        elif have == [p.target] and functions is not None and p.target in functions:
            from .cache_inference import unplaceable

            why = unplaceable(p, functions[p.target])
            if why is None:
                run.append(p)
            else:
                skipped.append((p.target, why))
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
        return dropout_target(pair, fns, spec, notes)
    if pair.op == "batchnorm_running":
        return batchnorm_modes_target(pair, fns, spec, notes)
    if pair.op in ("linear_svm", "linear_softmax"):
        return linear_classifier_target(pair, fns, spec, notes)
    if pair.forward is not None and pair.forward not in fns:  # the backward alone: see cache_inference
        from .cache_inference import adapt

        forward, backward = adapt(pair, fns[pair.target], spec, AdapterError)
        return audit_target(pair.target, pair.op, forward, backward, spec.forward), spec.inputs
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


def functions_in(module) -> dict[str, Any]:
    """The callables of a module by name (what the plan looks for)."""
    return {n: v for n, v in vars(module).items() if callable(v)}
