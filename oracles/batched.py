"""The framework oracles over K value sets of one shape at once (`gradaudit fuzz`): what their
`vjp_batch` share.

torch_oracle.vjp_batch: `torch.func.vmap` over `torch.func.vjp`; jax_oracle.vjp_batch: `jax.vmap` over
`jax.vjp`, jitted (one compile per shapes and K). Arrays and upstream gradients carry a leading axis of K value
sets; params (labels, masks, strides) are shared by all of them. Each returns the forward outputs
(a tuple, each (K, ...)) and the gradients (name -> (K, ...)), as the per-example `vjp` of
oracles/torch_oracle.py and oracles/jax_oracle.py would for each value set, up to rounding: a
batched matmul may sum in another order. A forward that vmap cannot map (an op without a batching
rule) is differentiated value set by value set with the per-example `vjp` (`one_by_one`), and
remembered (`UNMAPPABLE`).
"""
from __future__ import annotations

import functools

import numpy as np

from .base import as_tuple

__all__ = ["UNMAPPABLE", "one_by_one", "unbatched", "vjp_batch", "warm_up"]

# forwards that vmap could not map, by (oracle, forward): differentiated one value set at a time
UNMAPPABLE: set = set()


def unbatched(oracle: str, forward) -> bool:
    """Whether `oracle` differentiates `forward` value set by value set (vmap failed on it)."""
    return (oracle, forward) in UNMAPPABLE


@functools.cache
def warm_up(oracle: str) -> None:
    """Pay the one-off costs of the batched path before a campaign's clock starts (torch.func's first
    vmap imports torch._dynamo: ~5 s here)."""
    from . import get

    getattr(get(oracle), "warm_up_batch", lambda: None)()


def vjp_batch(oracle: str, forward, xs: dict, params: dict, douts: tuple, *, dtype: str, device: str):
    """`oracle`'s `vjp_batch` (oracles/torch_oracle.py, oracles/jax_oracle.py)."""
    from . import get

    return get(oracle).vjp_batch(forward, xs, params, douts, dtype=dtype, device=device)


def one_by_one(oracle: str, forward, xs: dict, params: dict, douts: tuple, *, dtype: str, device: str):
    from . import get

    vjp = get(oracle).vjp
    k = len(next(iter(xs.values())))
    res = [vjp(forward, {n: a[i] for n, a in xs.items()}, params, tuple(d[i] for d in douts), dtype=dtype,
               device=device) for i in range(k)]
    outs = tuple(np.stack(o) for o in zip(*(as_tuple(r.out) for r in res)))
    return outs, {n: np.stack([r.grads[n] for r in res]) for n in xs}
