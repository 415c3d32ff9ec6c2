"""The Target of a `@gradaudit.derivation`: the frameworks differentiate the user's own array-API
forward (`Target.xp_forward(xp, *arrays, **params)`, run with torch's and jax.numpy's namespaces);
the NumPy side and the numeric oracle run `forward`, the same function with `array_api_compat.numpy`.
"""
from __future__ import annotations

import inspect

import numpy as np

from properties.target import Target

from . import _slips

__all__ = ["derivation_target"]


def _is_float_array(v) -> bool:
    return isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)


def derivation_target(d, name: str, *, wrap=None) -> Target:
    """The Target of a Derivation: its forward under NumPy, its backward, and its xp forward.
    `wrap(fn, fname)` (optional) guards every call into the user's two functions."""
    import array_api_compat.numpy as xp_np

    if d.backward_fn is None:
        raise TypeError(f"{d.name}: no backward (decorate one with @{d.name}.backward)")
    fn, bwd = d.fn, d.backward_fn
    try:
        bwd_params = inspect.signature(bwd).parameters
    except (TypeError, ValueError):
        bwd_params = {}
    wants_out = "out" in bwd_params or any(p.kind == p.VAR_KEYWORD for p in bwd_params.values())
    if wrap is not None:
        fn, bwd = wrap(fn, d.name), wrap(bwd, bwd.__name__)
    names = list(d.arrays)

    def cast_params(params, dtype):
        # float parameters follow the arrays' dtype, so float32 stays float32 on every side
        return {k: v.astype(dtype) if _is_float_array(v) else v for k, v in params.items()}

    def forward(*arrays, **params):
        params = cast_params(params, arrays[0].dtype)
        try:
            out = fn(xp_np, *arrays, **params)
        except Exception as e:  # a shape error: with the sizes drawn, and symbols that look alike
            slip = _slips.forward_error(d, name, e, arrays, params)
            if slip is None:
                raise
            raise slip from e
        if isinstance(out, list):
            out = tuple(out)
        return out, (arrays, params, out)

    def backward(*args):
        *douts, (arrays, params, out) = args
        kw = dict(params)
        if wants_out:
            kw["out"] = out
        grads = bwd(*douts, *arrays, **kw)
        if isinstance(grads, dict):
            grads = tuple(grads.get(n) for n in names)
        if len(names) == 1 and not isinstance(grads, (tuple, list)):
            grads = (grads,)
        if isinstance(grads, (tuple, list)):
            grads = tuple(_cast(g, a) for g, a in zip(grads, arrays)) + tuple(grads[len(arrays):])
            return grads if len(grads) > 1 else grads[0]
        return grads

    def xp_forward(xp, *arrays, **params):
        dtype = arrays[0].dtype
        params = {k: xp.astype(v, dtype) if _framework_float(xp, v) else v for k, v in params.items()}
        try:
            return fn(xp, *arrays, **params)
        except Exception as e:  # np.tanh on a tensor: "use xp.tanh", not the framework's own advice
            kind = type(arrays[0]).__module__
            slip = _slips.framework_slip(d, e, "torch" if "torch" in kind else "JAX" if "jax" in kind else kind)
            if slip is None:
                raise
            raise slip from e

    return Target(name=name, op=d.name, forward=forward, backward=backward, xp_forward=xp_forward)


def _cast(g, like: np.ndarray):
    """A float gradient of the right shape is cast to its input's dtype; anything else is left for
    the runner to report (wrong shape, None, ...)."""
    if isinstance(g, (np.ndarray, np.generic)) and np.issubdtype(np.asarray(g).dtype, np.floating) \
            and np.shape(g) == like.shape:
        return np.asarray(g, dtype=like.dtype)
    if isinstance(g, (int, float)) and like.shape == ():
        return np.asarray(g, dtype=like.dtype)
    return g


def _framework_float(xp, v) -> bool:
    dtype = getattr(v, "dtype", None)
    if dtype is None or not hasattr(v, "shape"):
        return False
    try:
        return xp.isdtype(dtype, "real floating")
    except Exception:
        return False
