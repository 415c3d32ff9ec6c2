"""The framework oracles over K value sets of one shape at once (`gradaudit fuzz`).

`torch_vjp_batch`: `torch.func.vmap` over `torch.func.vjp`; `jax_vjp_batch`: `jax.vmap` over `jax.vjp`,
jitted (one compile per shapes and K). Arrays and upstream gradients carry a leading axis of K value
sets; params (labels, masks, strides) are shared by all of them. Each returns the forward outputs
(a tuple, each (K, ...)) and the gradients (name -> (K, ...)), as the per-example `vjp` of
oracles/torch_oracle.py and oracles/jax_oracle.py would for each value set, up to rounding: a
batched matmul may sum in another order. A forward that vmap cannot map (an op without a batching
rule) is differentiated value set by value set with the per-example `vjp`, and remembered.
"""
from __future__ import annotations

import functools

import numpy as np

from .base import Elsewhere, OracleUnavailable, as_tuple

__all__ = ["jax_vjp_batch", "torch_vjp_batch", "unbatched", "warm_up"]

# forwards that vmap could not map, by (oracle, forward): differentiated one value set at a time
_UNMAPPABLE: set = set()


def unbatched(oracle: str, forward) -> bool:
    """Whether `oracle` differentiates `forward` value set by value set (vmap failed on it)."""
    return (oracle, forward) in _UNMAPPABLE


@functools.cache
def warm_up(oracle: str) -> None:
    """Pay the one-off costs of the batched path before a campaign's clock starts: torch.func's first
    vmap imports torch._dynamo (~5 s here)."""
    if oracle == "torch":
        from .torch_oracle import _torch

        torch = _torch()
        torch.func.vmap(lambda x: torch.func.vjp(torch.sin, x)[1](x))(torch.zeros(2, 1, dtype=torch.float64))


def _one_by_one(oracle: str, forward, xs: dict, params: dict, douts: tuple, *, dtype: str, device: str):
    from . import get

    vjp = get(oracle).vjp
    k = len(next(iter(xs.values())))
    res = [vjp(forward, {n: a[i] for n, a in xs.items()}, params, tuple(d[i] for d in douts), dtype=dtype,
               device=device) for i in range(k)]
    outs = tuple(np.stack(o) for o in zip(*(as_tuple(r.out) for r in res)))
    return outs, {n: np.stack([r.grads[n] for r in res]) for n in xs}


def torch_vjp_batch(forward, xs: dict, params: dict, douts: tuple, *, dtype: str, device: str):
    """`forward(*tensors, **params)` (torch) and its VJP for each of the K value sets in `xs`/`douts`."""
    if isinstance(forward, Elsewhere):
        raise OracleUnavailable("a forward in another process is differentiated value set by value set")
    from .torch_oracle import _torch, check_available

    torch = _torch()
    check_available(device)
    if ("torch", forward) in _UNMAPPABLE:
        return _one_by_one("torch", forward, xs, params, douts, dtype=dtype, device=device)
    tdtype = getattr(torch, dtype)
    kw = {k: torch.as_tensor(v, device=device) if isinstance(v, np.ndarray) else v for k, v in params.items()}
    prim = [torch.as_tensor(np.asarray(a, dtype=dtype), device=device) for a in xs.values()]
    cot = [torch.as_tensor(np.asarray(d), dtype=tdtype, device=device) for d in douts]
    n = len(prim)

    def one(*args):
        out, pull = torch.func.vjp(lambda *p: forward(*p, **kw), *args[:n])
        single = not isinstance(out, (tuple, list))
        grads = pull(args[n] if single else tuple(args[n:]))
        return (out,) if single else tuple(out), grads

    try:
        outs, grads = torch.func.vmap(one)(*prim, *cot)
    except Exception:  # no batching rule for one of its ops (or data-dependent control flow)
        _UNMAPPABLE.add(("torch", forward))
        return _one_by_one("torch", forward, xs, params, douts, dtype=dtype, device=device)
    to_np = lambda t: t.detach().cpu().numpy()  # noqa: E731
    return tuple(to_np(o) for o in outs), {name: to_np(g) for name, g in zip(xs, grads)}


@functools.cache
def _jax_compiled(forward, static: tuple, n_params: tuple):
    from .jax_oracle import _jax

    jax = _jax()
    fn = functools.partial(forward, **dict(static))

    def one(arrays, array_params, douts):
        out, pullback = jax.vjp(lambda *xs: fn(*xs, **array_params), *arrays)
        return as_tuple(out), pullback(douts if isinstance(out, tuple) else douts[0])

    # the value sets along axis 0 of the arrays and the upstream gradients; array params shared
    return jax.jit(jax.vmap(one, in_axes=(0, None, 0)))


def jax_vjp_batch(forward, xs: dict, params: dict, douts: tuple, *, dtype: str, device: str):
    """`forward(*arrays, **params)` (JAX-traceable) and its VJP for each of the K value sets, jitted."""
    if isinstance(forward, Elsewhere):
        raise OracleUnavailable("a forward in another process is differentiated value set by value set")
    from .jax_oracle import _device, _freeze, _jax

    jax = _jax()
    dev = _device(device)
    if ("jax", forward) in _UNMAPPABLE:
        return _one_by_one("jax", forward, xs, params, douts, dtype=dtype, device=device)
    static = tuple(sorted((k, _freeze(v)) for k, v in params.items() if not isinstance(v, np.ndarray)))
    tree = (tuple(np.asarray(a, dtype=dtype) for a in xs.values()),
            {k: v for k, v in params.items() if isinstance(v, np.ndarray)},
            tuple(np.asarray(d, dtype=dtype) for d in douts))
    if dev != jax.devices()[0]:
        tree = jax.device_put(tree, dev)
    try:
        outs, grads = _jax_compiled(forward, static, tuple(sorted(tree[1])))(*tree)
    except Exception:
        _UNMAPPABLE.add(("jax", forward))
        return _one_by_one("jax", forward, xs, params, douts, dtype=dtype, device=device)
    return tuple(np.asarray(o) for o in outs), {n: np.asarray(g) for n, g in zip(xs, grads)}
