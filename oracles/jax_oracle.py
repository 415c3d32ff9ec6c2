"""JAX as an oracle: `jax.vjp` of a forward written with JAX's built-in ops, always jit-compiled.

Eager JAX costs ~100x more per call than a cached compiled function, so each (op, static params)
gets one jitted forward+VJP; jit's own cache then compiles once per shapes and dtypes. The
(op, static params, shapes, dtypes) keys seen are counted so the cache hit rate can be measured.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from .base import Elsewhere, OracleResult, OracleUnavailable, as_tuple, loaded

__all__ = ["builtin", "cache_stats", "check_available", "device_name", "flags", "name", "namespace", "set_tf32",
           "vjp", "vjp_batch"]

name = "jax"
cache_stats = {"hits": 0, "misses": 0}
_seen_keys: set = set()


@functools.cache
def _jax():
    # JAX takes 75% of a GPU's memory when its backend starts; torch and other --workers processes
    # share the GPU here, so allocate on demand (read when the backend starts, not at import)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax
    except Exception as e:
        raise OracleUnavailable(f"jax cannot be imported ({type(e).__name__}: {e})") from None
    jax.config.update("jax_enable_x64", True)  # float64 cells must really be float64
    # float32 dot/conv on GPU default to TF32; comparisons run at full precision.
    jax.config.update("jax_default_matmul_precision", "highest")
    loaded("jax", jax)  # the process's settings (properties/process.py: the compile cache, TF32 if asked)
    return jax


def flags() -> dict:
    jax = _jax()
    return {"jax_matmul_precision": str(jax.config.jax_default_matmul_precision)}


def set_tf32(enabled: bool, jax=None) -> None:
    """(`jax`: the module, for a setting applied while the oracle loads it, oracles.base.on_load)"""
    (jax or _jax()).config.update("jax_default_matmul_precision", "tensorfloat32" if enabled else "highest")


def _device(device: str):
    jax = _jax()
    platform = {"cpu": "cpu", "cuda": "gpu"}.get(device)
    if platform is None:
        raise OracleUnavailable(f"jax: unknown device {device!r}")
    try:
        return jax.devices(platform)[0]
    except RuntimeError:
        raise OracleUnavailable(f"jax: no {platform} backend (jax.devices({platform!r}) found none)") from None


def check_available(device: str) -> None:
    _device(device)


def device_name(device: str) -> str:
    return getattr(_device(device), "device_kind", device)


def builtin(op: str):
    """The catalogue op `op` written with JAX's built-in ops (oracles/jax_ops.py)."""
    _jax()
    from . import jax_ops

    return getattr(jax_ops, op)


@functools.cache
def namespace():
    """jax.numpy as an array-API namespace (for a forward written against `xp`)."""
    jax = _jax()
    import array_api_compat

    return array_api_compat.array_namespace(jax.numpy.zeros(()))


@functools.cache
def _compiled(forward, static: tuple):
    # the forward itself is part of the cache key: two forwards never share a compile
    jax = _jax()
    fn = functools.partial(forward, **dict(static))

    def forward_and_vjp(arrays, array_params, douts):
        out, pullback = jax.vjp(lambda *xs: fn(*xs, **array_params), *arrays)
        return out, pullback(douts if isinstance(out, tuple) else douts[0])

    return jax.jit(forward_and_vjp)


def _freeze(v):
    return tuple(v) if isinstance(v, list) else v


def vjp(forward, arrays: dict, params: dict, douts: tuple, *, dtype: str, device: str) -> OracleResult:
    """`forward(*arrays, **params) -> out` (a JAX-traceable function) and its VJP with `douts`, jitted."""
    if isinstance(forward, Elsewhere):  # a derivation's forward in an audit child: differentiated there
        return forward.vjp("jax", arrays, params, douts, dtype=dtype, device=device)
    jax = _jax()
    dev = _device(device)
    static = tuple(sorted((k, _freeze(v)) for k, v in params.items() if not isinstance(v, np.ndarray)))
    tree = (tuple(np.asarray(a, dtype=dtype) for a in arrays.values()),
            tuple(np.asarray(d, dtype=dtype) for d in douts),
            {k: v for k, v in params.items() if isinstance(v, np.ndarray)})
    # jit puts NumPy arguments on the default device itself, ~10x cheaper than a device_put per array
    # (which cost more than the op); other devices get one device_put for the whole tree
    xs, ds, array_params = tree if dev == jax.devices()[0] else jax.device_put(tree, dev)
    key = (forward, static, tuple((a.shape, str(a.dtype)) for a in xs),
           tuple((k, v.shape, str(v.dtype)) for k, v in sorted(array_params.items())))
    if key in _seen_keys:
        cache_stats["hits"] += 1
    else:
        _seen_keys.add(key)
        cache_stats["misses"] += 1
    out, grads = _compiled(forward, static)(xs, array_params, ds)
    outs = tuple(np.asarray(o) for o in as_tuple(out))
    grads_np = {n: np.asarray(g) for n, g in zip(arrays, grads)}
    return OracleResult(out=outs if len(outs) > 1 else outs[0], grads=grads_np)


@functools.cache
def _batch_compiled(forward, static: tuple, n_params: tuple, platform: str):
    jax = _jax()
    fn = functools.partial(forward, **dict(static))

    def one(arrays, array_params, douts):
        out, pullback = jax.vjp(lambda *xs: fn(*xs, **array_params), *arrays)
        return as_tuple(out), pullback(douts if isinstance(out, tuple) else douts[0])

    def batch(arrays, array_params, douts):
        # the value sets along axis 0 of the arrays and the upstream gradients; array params shared.
        # vmap turns a convolution with a batched kernel into one grouped convolution, which XLA:CPU
        # runs far slower than K convolutions in a loop (small conv2d, K = 256: 121 vs 3 us a value
        # set); elsewhere vmap is the faster (an LSTM: 7 vs 30 us)
        if platform == "cpu":
            shape_of = functools.partial(jax.tree.map, lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype))
            one_set = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), (arrays, douts))
            if "conv_general_dilated" in str(jax.make_jaxpr(one)(one_set[0], shape_of(array_params), one_set[1])):
                return jax.lax.map(lambda a_d: one(a_d[0], array_params, a_d[1]), (arrays, douts))
        return jax.vmap(one, in_axes=(0, None, 0))(arrays, array_params, douts)

    return jax.jit(batch)


def vjp_batch(forward, xs: dict, params: dict, douts: tuple, *, dtype: str, device: str):
    """`forward(*arrays, **params)` (JAX-traceable) and its VJP for each of the K value sets, jitted."""
    if isinstance(forward, Elsewhere):
        raise OracleUnavailable("a forward in another process is differentiated value set by value set")
    from .batched import UNMAPPABLE, one_by_one

    jax = _jax()
    dev = _device(device)
    if ("jax", forward) in UNMAPPABLE:
        return one_by_one("jax", forward, xs, params, douts, dtype=dtype, device=device)
    static = tuple(sorted((k, _freeze(v)) for k, v in params.items() if not isinstance(v, np.ndarray)))
    tree = (tuple(np.asarray(a, dtype=dtype) for a in xs.values()),
            {k: v for k, v in params.items() if isinstance(v, np.ndarray)},
            tuple(np.asarray(d, dtype=dtype) for d in douts))
    if dev != jax.devices()[0]:
        tree = jax.device_put(tree, dev)
    try:
        outs, grads = _batch_compiled(forward, static, tuple(sorted(tree[1])), dev.platform)(*tree)
    except Exception:
        UNMAPPABLE.add(("jax", forward))
        return one_by_one("jax", forward, xs, params, douts, dtype=dtype, device=device)
    return tuple(np.asarray(o) for o in outs), {n: np.asarray(g) for n, g in zip(xs, grads)}
