"""Hypothesis strategies: consistent shapes, and values drawn per *value regime*.

Shapes and params are drawn by Hypothesis directly, so a failure shrinks to the smallest shape.
Values of small arrays are drawn element by element (`hypothesis.extra.numpy.arrays`), so they
shrink too; larger arrays are filled from a NumPy generator seeded by a drawn integer, which keeps
generation cheap at medium shapes (per-element drawing dominates the run time there).
Subnormals are never drawn: XLA on CPU flushes float32 subnormals to zero (CONVENTIONS row 26).
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# regime -> (description, how to sample with a Generator, element strategy for small arrays)
REGIMES = {
    "typical": "standard normal values",
    "large": "magnitudes ~100: exp overflows in float32 (not float64)",
    "overflow": "logits ~1e3 apart: exp overflows even in float64; a stable implementation stays finite",
    "kinks": "integer values in [-2, 2]: exact zeros and exact ties",
    "tiny": "magnitudes ~1e-4",
    "saturated": "|x| in [10, 40]: sigmoid and tanh saturate",
    "near_constant": "a constant plus ~1e-3 noise: near-zero variance",
}

ELEMENTWISE_MAX = 6  # arrays up to this size are drawn element by element

# JAX compiles once per shape (~50-100 ms on CPU, vs ~0.1 ms to run): draw every dimension from a
# small fixed set so the compile cache is hit. 1 is in every set (batch 1, T = 1, one class).
SIZES = (1, 2, 3, 5)


def dim(*choices: int) -> st.SearchStrategy[int]:
    """A dimension from a bounded set (default SIZES); shrinks towards the first choice."""
    return st.sampled_from(choices or SIZES)


# Shape breadth. A derandomized ci run checks 12 examples per (op, regime, dtype), and every new
# shape is a JAX compile (50-2000 ms against a few ms per example): "narrow" (the ci profile) draws
# each op's shapes from a short list of complete geometries, an edge one (batch 1, T = 1, a dim of 1,
# a scalar) and a rich one (batch >= 2, T >= 2, all dims distinct, so a missing 1/N, a transposed
# weight or a wrong axis cannot pass by luck); "full" (dev, thorough) draws from every bounded set.
# The runner sets it from the profile (properties.runner.BREADTH) while it builds and draws a run's
# strategies; the catalogue's composite strategies read it when they draw.
BREADTHS = ("full", "narrow")
_breadth = ["full"]


@contextlib.contextmanager
def breadth(name: str):
    """Draw shapes at this breadth inside the block."""
    if name not in BREADTHS:
        raise ValueError(f"unknown shape breadth {name!r}; known: {', '.join(BREADTHS)}")
    _breadth.append(name)
    try:
        yield
    finally:
        _breadth.pop()


def narrow() -> bool:
    return _breadth[-1] == "narrow"


@functools.lru_cache(maxsize=1024)
def _sampled(choices: tuple) -> st.SearchStrategy:
    return st.sampled_from(choices)


def geometry(*choices: tuple, ci: int = 2) -> st.SearchStrategy[tuple]:
    """One of a few complete shape tuples (the first is the simplest: it shrinks towards it); at
    narrow breadth one of the first `ci`, which must hold an edge and a rich geometry."""
    return _sampled(choices[:ci] if narrow() else choices)


def shapes(ci: tuple, full: st.SearchStrategy) -> st.SearchStrategy:
    """At narrow breadth one of the complete tuples `ci` (edge first); at full breadth `full`."""
    return _sampled(ci) if narrow() else full


def _sample(rng: np.random.Generator, shape, regime: str, scale: float) -> np.ndarray:
    if regime == "typical":
        x = rng.standard_normal(shape)
    elif regime == "large":
        x = rng.standard_normal(shape) * 100
    elif regime == "overflow":
        x = rng.standard_normal(shape) * 1000 + 800
    elif regime == "kinks":
        x = rng.integers(-2, 3, size=shape).astype(np.float64)
    elif regime == "tiny":
        x = rng.standard_normal(shape) * 1e-4
    elif regime == "saturated":
        x = rng.uniform(10, 40, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    elif regime == "near_constant":
        x = 1.5 + rng.standard_normal(shape) * 1e-3
    else:
        raise ValueError(f"unknown value regime {regime!r}; known: {', '.join(REGIMES)}")
    return np.asarray(x * scale, dtype=np.float64)


def _f32_inside(lo: float, hi: float, v: float) -> float:
    """`v` (lo or hi) rounded to float32, stepped back inside [lo, hi] when rounding left it."""
    x = np.float32(v)
    if x < lo:
        x = np.nextafter(x, np.float32(np.inf))
    elif x > hi:
        x = np.nextafter(x, np.float32(-np.inf))
    return float(x)


@functools.cache
def _elements(regime: str) -> st.SearchStrategy[float]:
    # width=32: values exact in float32, and normal there, so a float32 cell sees the same numbers
    # (width=32 wants bounds exact in float32: the nearest float32 values inside [lo, hi])
    f = lambda lo, hi: st.floats(_f32_inside(lo, hi, lo), _f32_inside(lo, hi, hi), allow_nan=False,  # noqa: E731
                                 allow_infinity=False, allow_subnormal=False, width=32)
    return {
        "typical": f(-3, 3),
        "large": f(-300, 300),
        "overflow": f(-2000, 3000),
        "kinks": st.integers(-2, 2).map(float),
        "tiny": f(-3e-4, 3e-4),
        "saturated": st.tuples(f(10, 40), st.sampled_from([-1.0, 1.0])).map(lambda t: t[0] * t[1]),
        "near_constant": f(-1e-3, 1e-3).map(lambda v: 1.5 + v),
    }[regime]


def float_arrays(shape, regime: str = "typical", *, scale: float = 1.0) -> st.SearchStrategy[np.ndarray]:
    """float64 arrays of `shape` with values from `regime` (times `scale`)."""
    shape = tuple(int(s) for s in shape)
    if regime not in REGIMES:
        raise ValueError(f"unknown value regime {regime!r}; known: {', '.join(REGIMES)}")
    return _float_arrays(shape, regime, float(scale))


# Strategies are immutable values: the catalogue's composite strategies ask for the same few
# (shape, regime, scale) on every draw, and building one (hnp.arrays validates its arguments, the
# element strategies are cached_strategy lookups) cost as much as drawing from it.
@functools.lru_cache(maxsize=4096)
def _float_arrays(shape: tuple[int, ...], regime: str, scale: float) -> st.SearchStrategy[np.ndarray]:
    if int(np.prod(shape)) <= ELEMENTWISE_MAX:
        return hnp.arrays(np.float64, shape, elements=_elements(regime)).map(
            lambda a: a * scale if scale != 1.0 else a)
    return st.integers(0, 2**32 - 1).map(
        lambda seed: _sample(np.random.default_rng(seed), shape, regime, scale))


@functools.lru_cache(maxsize=1024)
def labels(n: int, classes: int) -> st.SearchStrategy[np.ndarray]:
    """Integer class labels, shape (n,), in [0, classes)."""
    return hnp.arrays(np.int64, (n,), elements=st.integers(0, classes - 1))


def upstream(out_shapes, seed: int) -> tuple[np.ndarray, ...]:
    """Upstream gradients that are not all ones (a `.sum()` loss hides bugs: softmax's gradient is
    then identically 0, batchnorm's dx ~0): random signs and magnitudes in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    return tuple(rng.uniform(0.5, 2.0, size=s) * rng.choice([-1.0, 1.0], size=s) for s in out_shapes)
