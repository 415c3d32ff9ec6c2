"""The Target of a `@gradaudit.derivation`: the frameworks differentiate the user's own array-API
forward (`Target.xp_forward(xp, *arrays, **params)`, run with torch's and jax.numpy's namespaces);
the NumPy side and the numeric oracle run `forward`, the same function with `array_api_compat.numpy`.

A forward written the natural way may promote: `np.sqrt(2 / np.pi)` or `/ np.sqrt(d)` is a float64
NumPy scalar, and NumPy and JAX turn float32 times float64 into float64 (torch keeps float32). Every
side's output is cast back to the inputs' dtype, so the values are compared at the cell's dtype, and
the promotion is a `dtype` hazard that says where it happens (`promotion_site`).
"""
from __future__ import annotations

import inspect
import linecache
import re
import sys

import numpy as np

from properties.target import Target
from properties.verdict import report_hazard

from . import _slips

__all__ = ["derivation_target", "judged_output", "promotion_site"]


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

    sites: dict = {}

    def forward(*arrays, **params):
        params = cast_params(params, arrays[0].dtype)
        try:
            out = fn(xp_np, *arrays, **params)
        except Exception as e:  # a shape error: with the sizes drawn, and symbols that look alike
            slip = _slips.forward_error(d, name, e, arrays, params)
            if slip is None:
                raise
            raise slip from e
        promoted = _promoted(tuple(out) if isinstance(out, list) else out, arrays[0].dtype)
        if promoted is not None:
            key = (str(arrays[0].dtype), str(promoted))
            if key not in sites:
                sites[key] = promotion_site(d.fn, arrays, params, xp_np)
            report_hazard("dtype", _promotion_message(d.name, arrays[0].dtype, promoted, sites[key]))
        out = judged_output(out, arrays[0].dtype)
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
            wide = [(n, g.dtype) for n, g, a in zip(names, grads, arrays)
                    if isinstance(g, (np.ndarray, np.generic)) and g.dtype.kind == "f" and g.dtype != a.dtype]
            if wide:
                report_hazard("dtype", f"{name} returns {', '.join(f'grad[{n}]' for n, _ in wide)} as {wide[0][1]} "
                                       f"for {arrays[0].dtype} inputs: values judged after casting to "
                                       f"{arrays[0].dtype} (allocate with np.zeros_like(x) or dtype=x.dtype)")
            grads = tuple(_cast(g, a) for g, a in zip(grads, arrays)) + tuple(grads[len(arrays):])
            return grads if len(grads) > 1 else grads[0]
        return grads

    def xp_forward(xp, *arrays, **params):
        dtype = arrays[0].dtype
        params = {k: xp.astype(v, dtype) if _framework_float(xp, v) else v for k, v in params.items()}
        try:
            out = fn(xp, *arrays, **params)
        except Exception as e:  # np.tanh on a tensor: "use xp.tanh", not the framework's own advice
            kind = type(arrays[0]).__module__
            slip = _slips.framework_slip(d, e, "torch" if "torch" in kind else "JAX" if "jax" in kind else kind)
            if slip is None:
                raise
            raise slip from e
        # cast back where a float64 constant promoted (JAX does, torch does not): the upstream gradient
        # has the inputs' dtype, and JAX refuses a cotangent of another dtype than its output
        if isinstance(out, (tuple, list)):
            return tuple(xp.astype(o, dtype) if _framework_float(xp, o) and o.dtype != dtype else o for o in out)
        return xp.astype(out, dtype) if _framework_float(xp, out) and out.dtype != dtype else out

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


# ---- a forward that promotes ------------------------------------------------------------------

def _promoted(out, dtype) -> np.dtype | None:
    """The float dtype the forward's output was promoted to, if it is not the inputs' `dtype`."""
    for o in (out if isinstance(out, tuple) else (out,)):
        if isinstance(o, (np.ndarray, np.generic)) and o.dtype.kind == "f" and o.dtype != dtype:
            return o.dtype
    return None


def judged_output(out, dtype):
    """The forward's output as the derivation's target hands it on (to the backward's `out=` too): a
    list as a tuple, a float promoted beyond the inputs' `dtype` cast back. The audit child predicts
    the backward's arguments with it (gradaudit/_ahead.py)."""
    out = tuple(out) if isinstance(out, list) else out
    return out if _promoted(out, dtype) is None else _cast_out(out, dtype)


def _cast_out(out, dtype):
    cast = lambda o: np.asarray(o, dtype=dtype) if isinstance(o, (np.ndarray, np.generic)) and o.dtype.kind == "f" else o  # noqa: E731
    return tuple(cast(o) for o in out) if isinstance(out, tuple) else cast(out)


def _promotion_message(name: str, dtype, promoted, site: str | None) -> str:
    where = f" at {site}" if site else " (a float64 NumPy scalar such as np.sqrt(…) does that)"
    return (f"{name}: your forward promotes {dtype} to {promoted}{where}; for constants use math.sqrt(…) or "
            f"xp.asarray(…, dtype=x.dtype). Values are compared after casting back to {dtype}")


class _Traced(np.ndarray):
    """An array that notes where an operation first turns its narrower float dtype into float64."""

    site: list = []  # set per trace: [the note] once found
    user_file: str = ""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [i.view(np.ndarray) if isinstance(i, _Traced) else i for i in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, _Traced) else o for o in kwargs["out"])
        result = getattr(ufunc, method)(*plain, **kwargs)
        narrow = [i for i in inputs if isinstance(i, _Traced) and i.dtype.kind == "f" and i.dtype.itemsize < 8]
        if narrow and not _Traced.site and isinstance(result, np.ndarray) and result.dtype == np.float64:
            wide = next((i for i in inputs if not isinstance(i, _Traced) and np.asarray(i).dtype == np.float64), None)
            _Traced.site.append(_where(wide))
        return result.view(_Traced) if isinstance(result, np.ndarray) else result


def _where(wide) -> str:
    """file:line (the source line) and what the float64 operand was, from the user's innermost frame."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename != _Traced.user_file:
        frame = frame.f_back
    if frame is None:
        return ""
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    name = next((k for k, v in frame.f_locals.items() if wide is not None and v is wide), None)
    what = ""
    if name is not None:
        what = f": {name} is a float64 NumPy {'scalar' if np.ndim(wide) == 0 else 'array'}"
    else:
        call = re.search(r"np\.\w+\([^()]*(?:\([^()]*\)[^()]*)*\)", line)
        if call:
            what = f": {call.group(0)} is a float64 NumPy {'scalar' if np.ndim(wide) == 0 else 'array'}"
    file = frame.f_code.co_filename.rsplit("/", 1)[-1]
    return f"{file}:{frame.f_lineno} (`{line}`{what})"


def promotion_site(fn, arrays, params, xp) -> str | None:
    """Where `fn(xp, *arrays, **params)` first combines one of its narrower float arrays with a float64
    NumPy value, as 'file:line (`source`: name is a float64 NumPy scalar)'; None when the trace loses
    it (a library call that drops the array subclass)."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    _Traced.site, _Traced.user_file = [], code.co_filename
    try:
        fn(xp, *(np.asarray(a).view(_Traced) for a in arrays), **params)
    except Exception:  # the trace is a courtesy: a forward that rejects the subclass keeps the plain message
        return None
    finally:
        found, _Traced.site = _Traced.site, []
    return found[0] if found and found[0] else None
