"""Hypothesis strategies for a derivation's symbolic shapes and arguments."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from properties.spec import Case
from properties.strategies import ELEMENTWISE_MAX, float_arrays, narrow

from .arguments import DEFAULT_SIZES, ArgSpec

__all__ = ["cases"]

# `d` below is a gradaudit.derivation.Derivation: its `symbols()`, `sizes`, `arrays` and `params`.


def _distinct(d, usable) -> dict:
    """Each symbol the first of its choices that `usable` accepts and no other symbol took."""
    out, taken = {}, set()
    for sym in d.symbols():
        choices = tuple(d.sizes.get(sym, DEFAULT_SIZES))
        free = [c for c in choices if c not in taken]
        out[sym] = ([c for c in free if usable(c)] or free or list(choices))[0]
        taken.add(out[sym])
    return out


def _narrow_sizes(d) -> tuple[dict, dict]:
    """The two complete size assignments of the ci profile's narrow breadth, both with distinct sizes
    for distinct symbols (a missing transpose cannot type-check by luck): the smallest one (what the
    full strategy shrinks towards, a size 1 among them) and one with every size above 1 (a missing
    1/N cannot pass by luck)."""
    return _distinct(d, lambda c: True), _distinct(d, lambda c: c > 1)


def _sizes(draw, d, breadth: str) -> dict[str, int]:
    """Each symbol from its choices, avoiding sizes already taken by other symbols where it can
    (shrinks towards the first choices). At narrow breadth (the ci profile) one of two complete
    assignments: every new shape is a JAX compile."""
    if narrow(breadth):
        return dict(draw(st.sampled_from(_narrow_sizes(d))))
    taken, out = set(), {}
    for sym in d.symbols():
        choices = tuple(d.sizes.get(sym, DEFAULT_SIZES))
        free = tuple(c for c in choices if c not in taken) or choices
        out[sym] = draw(st.sampled_from(free))
        taken.add(out[sym])
    return out


def _concrete(shape, sizes) -> tuple[int, ...]:
    return tuple(sizes[s] if isinstance(s, str) else int(s) for s in shape)


def _uniform(shape, low, high):
    if int(np.prod(shape)) <= ELEMENTWISE_MAX:
        return hnp.arrays(np.float64, shape, elements=st.floats(low, high, allow_nan=False, allow_subnormal=False))
    return st.integers(0, 2**32 - 1).map(lambda s: np.random.default_rng(s).uniform(low, high, size=shape))


def _draw_arg(draw, spec: ArgSpec, sizes, regime):
    if spec.kind in ("choice", "fixed"):
        return draw(st.sampled_from(spec.values))
    shape = _concrete(spec.shape, sizes)
    if spec.kind in ("array", "const"):
        if spec.low is not None:
            return draw(_uniform(shape, spec.low, spec.high))
        return draw(float_arrays(shape, spec.regime or regime, scale=spec.scale))
    if spec.kind == "mask":
        seed = draw(st.integers(0, 2**32 - 1))
        return (np.random.default_rng(seed).random(shape) < spec.p).astype(np.float64)
    n_cls = sizes[spec.classes] if isinstance(spec.classes, str) else int(spec.classes)
    if spec.kind == "labels":
        return draw(hnp.arrays(np.int64, shape, elements=st.integers(0, n_cls - 1)))
    if spec.kind == "onehot":
        idx = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, n_cls - 1)))
        return np.eye(n_cls)[idx]
    raise ValueError(f"unknown argument kind {spec.kind!r}")


def cases(d, regime: str, breadth: str):
    """The strategy of a derivation's cases in `regime`, shapes at `breadth`."""
    @st.composite
    def draw_case(draw):
        sizes = _sizes(draw, d, breadth)
        arrays = {n: _draw_arg(draw, s, sizes, regime) for n, s in d.arrays.items()}
        params = {n: _draw_arg(draw, s, sizes, regime) for n, s in d.params.items()}
        return Case(arrays, params)

    return draw_case()
