"""PyTorch autograd as an oracle: forward with torch's built-in ops, VJP with the same upstream gradient."""
from __future__ import annotations

import functools

import numpy as np

from .base import Elsewhere, OracleResult, OracleUnavailable, as_tuple, loaded

__all__ = ["builtin", "check_available", "device_name", "flags", "name", "namespace", "set_tf32", "vjp", "vjp_batch",
           "warm_up_batch"]

name = "torch"


@functools.cache
def _torch():
    try:
        import torch
    except Exception as e:  # ImportError, or a broken install that fails on import
        raise OracleUnavailable(f"torch cannot be imported ({type(e).__name__}: {e})") from None
    # Comparisons run in full precision on GPU: TF32 changes float32 matmul/conv results at ~1e-3.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    loaded("torch", torch)  # the process's settings (properties/process.py: threads, TF32 if asked)
    return torch


def flags() -> dict:
    torch = _torch()
    return {"tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32)}


def set_tf32(enabled: bool, torch=None) -> None:
    """(`torch`: the module, for a setting applied while the oracle loads it, oracles.base.on_load)"""
    torch = torch or _torch()
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def check_available(device: str) -> None:
    torch = _torch()
    if device == "cuda" and not torch.cuda.is_available():
        raise OracleUnavailable("torch: no CUDA device (torch.cuda.is_available() is False)")
    if device not in ("cpu", "cuda"):
        raise OracleUnavailable(f"torch: unknown device {device!r}")


def device_name(device: str) -> str:
    torch = _torch()
    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def builtin(op: str):
    """The catalogue op `op` written with torch's built-in ops (oracles/torch_ops.py)."""
    _torch()
    from . import torch_ops

    return getattr(torch_ops, op)


def namespace():
    """torch as an array-API namespace (for a forward written against `xp`)."""
    _torch()
    import array_api_compat.torch as xp_torch

    return xp_torch


def vjp(forward, arrays: dict, params: dict, douts: tuple, *, dtype: str, device: str) -> OracleResult:
    """`forward(*tensors, **params) -> out` (a torch function) and its VJP with the upstream `douts`."""
    if isinstance(forward, Elsewhere):  # a derivation's forward in an audit child: differentiated there
        return forward.vjp("torch", arrays, params, douts, dtype=dtype, device=device)
    torch = _torch()
    check_available(device)
    tdtype = getattr(torch, dtype)
    inputs = [torch.tensor(np.asarray(a, dtype=dtype), device=device, requires_grad=True)
              for a in arrays.values()]
    kw = {k: torch.as_tensor(v, device=device) if isinstance(v, np.ndarray) else v
          for k, v in params.items()}
    outs = as_tuple(forward(*inputs, **kw))
    grad_outputs = [torch.as_tensor(np.asarray(d), dtype=tdtype, device=device) for d in douts]
    grads = torch.autograd.grad(outs, inputs, grad_outputs=grad_outputs, allow_unused=True)
    to_np = lambda t: t.detach().cpu().numpy()  # noqa: E731
    out_np = tuple(to_np(o) for o in outs)
    grads_np = {n: (to_np(g) if g is not None else np.zeros(a.shape, dtype=dtype))
                for (n, a), g in zip(arrays.items(), grads)}
    return OracleResult(out=out_np if len(out_np) > 1 else out_np[0], grads=grads_np)


def warm_up_batch() -> None:
    """torch.func's first vmap imports torch._dynamo (~5 s): once, before a fuzzing campaign's clock."""
    torch = _torch()
    torch.func.vmap(lambda x: torch.func.vjp(torch.sin, x)[1](x))(torch.zeros(2, 1, dtype=torch.float64))


def vjp_batch(forward, xs: dict, params: dict, douts: tuple, *, dtype: str, device: str):
    """`forward(*tensors, **params)` (torch) and its VJP for each of the K value sets in `xs`/`douts`."""
    if isinstance(forward, Elsewhere):
        raise OracleUnavailable("a forward in another process is differentiated value set by value set")
    from .batched import UNMAPPABLE, one_by_one

    torch = _torch()
    check_available(device)
    if ("torch", forward) in UNMAPPABLE:
        return one_by_one("torch", forward, xs, params, douts, dtype=dtype, device=device)
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
        UNMAPPABLE.add(("torch", forward))
        return one_by_one("torch", forward, xs, params, douts, dtype=dtype, device=device)
    to_np = lambda t: t.detach().cpu().numpy()  # noqa: E731
    return tuple(to_np(o) for o in outs), {name: to_np(g) for name, g in zip(xs, grads)}
