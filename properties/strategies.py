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
from dataclasses import dataclass
from typing import Callable

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = ["BREADTHS", "ELEMENTWISE_MAX", "REGIMES", "SIZES", "Regime", "dim", "float_arrays", "geometry", "labels",
           "narrow", "origins", "shapes", "upstream"]


def _f32_inside(lo: float, hi: float, v: float) -> float:
    """`v` (lo or hi) rounded to float32, stepped back inside [lo, hi] when rounding left it."""
    x = np.float32(v)
    if x < lo:
        x = np.nextafter(x, np.float32(np.inf))
    elif x > hi:
        x = np.nextafter(x, np.float32(-np.inf))
    return float(x)


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    # width=32: values exact in float32, and normal there, so a float32 cell sees the same numbers
    # (width=32 wants bounds exact in float32: the nearest float32 values inside [lo, hi])
    return st.floats(_f32_inside(lo, hi, lo), _f32_inside(lo, hi, hi), allow_nan=False, allow_infinity=False,
                     allow_subnormal=False, width=32)


@dataclass(frozen=True)
class Regime:
    """A value regime: what it is for, how a large array is sampled (from a NumPy Generator, for a
    shape), and the strategy of one element of a small array (drawn element by element, so it shrinks).
    A regime of extreme values also says how to move an array of its values back to ordinary
    magnitudes (`ordinary`): a derivation that fails there but agrees on the same case moved back is
    right, and its evaluation unstable (properties/stability.py)."""

    description: str
    sample: Callable[[np.random.Generator, tuple], np.ndarray]
    element: Callable[[], st.SearchStrategy[float]]
    ordinary: Callable[[np.ndarray], np.ndarray] | None = None


def _shrunk(a: np.ndarray, limit: float = 3.0) -> np.ndarray:
    """`a` scaled down to max |a| = limit (unchanged when it is already within)."""
    m = float(np.abs(a).max(initial=0.0))
    return a * (limit / m) if m > limit else a


def _grown(a: np.ndarray, floor: float = 1.0) -> np.ndarray:
    """`a` scaled up to max |a| = floor when all of it is tiny (arrays of ordinary values unchanged)."""
    m = float(np.abs(a).max(initial=0.0))
    return a * (floor / m) if 0 < m < 1e-2 else a


def _spread(a: np.ndarray) -> np.ndarray:
    """A near-constant array's deviations from its mean, at unit scale (other arrays unchanged)."""
    centred = a - a.mean() if a.size else a
    s = float(np.abs(centred).max(initial=0.0))
    return centred / s if a.size > 1 and 0 < s < 1e-2 * max(1.0, float(np.abs(a).max())) else a


# The value regimes: each is defined here, and only here.
REGIMES: dict[str, Regime] = {
    "typical": Regime("standard normal values",
                      lambda rng, s: rng.standard_normal(s), lambda: _floats(-3, 3)),
    "large": Regime("magnitudes ~100: exp overflows in float32 (not float64)",
                    lambda rng, s: rng.standard_normal(s) * 100, lambda: _floats(-300, 300), _shrunk),
    "overflow": Regime("logits ~1e3 apart: exp overflows even in float64; a stable implementation stays finite",
                       lambda rng, s: rng.standard_normal(s) * 1000 + 800, lambda: _floats(-2000, 3000), _shrunk),
    "kinks": Regime("integer values in [-2, 2]: exact zeros and exact ties",
                    lambda rng, s: rng.integers(-2, 3, size=s).astype(np.float64),
                    lambda: st.integers(-2, 2).map(float)),
    "tiny": Regime("magnitudes ~1e-4", lambda rng, s: rng.standard_normal(s) * 1e-4, lambda: _floats(-3e-4, 3e-4),
                   _grown),
    "saturated": Regime("|x| in [10, 40]: sigmoid and tanh saturate",
                        lambda rng, s: rng.uniform(10, 40, size=s) * rng.choice([-1.0, 1.0], size=s),
                        lambda: st.tuples(_floats(10, 40), st.sampled_from([-1.0, 1.0])).map(lambda t: t[0] * t[1]),
                        _shrunk),
    "near_constant": Regime("a constant plus ~1e-3 noise: near-zero variance",
                            lambda rng, s: 1.5 + rng.standard_normal(s) * 1e-3,
                            lambda: _floats(-1e-3, 1e-3).map(lambda v: 1.5 + v), _spread),
}

ELEMENTWISE_MAX = 6  # arrays up to this size are drawn element by element

# JAX compiles once per shape (~50-100 ms on CPU, vs ~0.1 ms to run): draw every dimension from a
# small fixed set so the compile cache is hit. 1 is in every set (batch 1, T = 1, one class).
SIZES = (1, 2, 3, 5)


def dim(*choices: int) -> st.SearchStrategy[int]:
    """A dimension from a bounded set (default SIZES); shrinks towards the first choice."""
    return st.sampled_from(choices or SIZES)


# Shape breadth, a parameter of every op's `inputs(regime, breadth)`. A derandomized ci run checks 12
# examples per (op, regime, dtype), and every new shape is a JAX compile (50-2000 ms against a few
# ms per example): "narrow" (the ci profile) draws each op's shapes from a short list of complete
# geometries, an edge one (batch 1, T = 1, a dim of 1, a scalar) and a rich one (batch >= 2, T >= 2,
# all dims distinct, so a missing 1/N, a transposed weight or a wrong axis cannot pass by luck);
# "full" (dev, thorough) draws from every bounded set. The profile decides (properties.config).
BREADTHS = ("full", "narrow")


def narrow(breadth: str) -> bool:
    if breadth not in BREADTHS:
        raise ValueError(f"unknown shape breadth {breadth!r}; known: {', '.join(BREADTHS)}")
    return breadth == "narrow"


@functools.lru_cache(maxsize=1024)
def _sampled(choices: tuple) -> st.SearchStrategy:
    return st.sampled_from(choices)


def geometry(breadth: str, *choices: tuple, ci: int = 2) -> st.SearchStrategy[tuple]:
    """One of a few complete shape tuples (the first is the simplest: it shrinks towards it); at
    narrow breadth one of the first `ci`, which must hold an edge and a rich geometry."""
    return _sampled(choices[:ci] if narrow(breadth) else choices)


def shapes(breadth: str, ci: tuple, full: st.SearchStrategy) -> st.SearchStrategy:
    """At narrow breadth one of the complete tuples `ci` (edge first); at full breadth `full`."""
    return _sampled(ci) if narrow(breadth) else full


def _sample(rng: np.random.Generator, shape, regime: str, scale: float) -> np.ndarray:
    return np.asarray(REGIMES[regime].sample(rng, shape) * scale, dtype=np.float64)


@functools.cache
def _elements(regime: str) -> st.SearchStrategy[float]:
    return REGIMES[regime].element()


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
            lambda a: _noted(a * scale if scale != 1.0 else a, regime, scale))
    return st.integers(0, 2**32 - 1).map(
        lambda seed: _noted(_sample(np.random.default_rng(seed), shape, regime, scale), regime, scale))


_ORIGINS: list | None = None  # while `origins` records: (array, regime, scale) of each float array drawn


def _noted(a: np.ndarray, regime: str, scale: float) -> np.ndarray:
    if _ORIGINS is not None:
        _ORIGINS.append((a, regime, scale))
    return a


@contextlib.contextmanager
def origins():
    """Record the regime and scale of every `float_arrays` array drawn inside (a list of (array, regime,
    scale)): a fuzzing batch draws more values of a case's shapes from the same regimes (properties/fuzz.py)."""
    global _ORIGINS
    outer, _ORIGINS = _ORIGINS, []
    try:
        yield _ORIGINS
    finally:
        _ORIGINS = outer


@functools.lru_cache(maxsize=1024)
def labels(n: int, classes: int) -> st.SearchStrategy[np.ndarray]:
    """Integer class labels, shape (n,), in [0, classes)."""
    return hnp.arrays(np.int64, (n,), elements=st.integers(0, classes - 1))


def upstream(out_shapes, seed: int) -> tuple[np.ndarray, ...]:
    """Upstream gradients that are not all ones (a `.sum()` loss hides bugs: softmax's gradient is
    then identically 0, batchnorm's dx ~0): random signs and magnitudes in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    return tuple(rng.uniform(0.5, 2.0, size=s) * rng.choice([-1.0, 1.0], size=s) for s in out_shapes)
