"""Strategies and kink helpers shared by several catalogue modules (registers no op)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from ..strategies import dim, geometry, shapes  # re-exported for the family modules

__all__ = ["ELEMENTWISE_CI", "PROJECTION_SPREAD", "dim", "elementwise_full", "elementwise_shapes", "float32_exact",
           "geometry", "kink_tol", "shapes"]

# The numeric oracle moves an element by at most its step h (`tol` / 2 for the largest element)
# when it builds the full Jacobian, but by h * u with u ~ N(0, 1) along every element at once when
# it projects on random directions (inputs of more than 128 elements): two elements then move
# apart by |u_i - u_j| * h, under 5 * tol with overwhelming probability. Kinks closer than that
# are straddled. (torch and jax pass tol = 0: only exact kinks count for them.)
PROJECTION_SPREAD = 5.0


# narrow breadth (ci): the scalar of the worked examples, and a rank-2 shape with distinct dims
ELEMENTWISE_CI = ((), (2, 3))


def elementwise_full(max_rank: int = 3) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes S of rank 0..max_rank (S = () is the scalar of the worked examples), dims in {1, 2, 3}."""
    return st.lists(dim(3, 1, 2), min_size=0, max_size=max_rank).map(tuple)


def elementwise_shapes(breadth: str, max_rank: int = 3) -> st.SearchStrategy[tuple[int, ...]]:
    """`elementwise_full`; at narrow breadth one of ELEMENTWISE_CI."""
    return shapes(breadth, ELEMENTWISE_CI, elementwise_full(max_rank))


def kink_tol(case, tol: float) -> float:
    """How close to a kink counts as on it, for an oracle whose `tol` the evaluator passed.

    The numeric oracle straddles kinks nearer than its step (PROJECTION_SPREAD * tol, above), and
    XLA on CPU flushes float32 subnormals to zero (CONVENTIONS row 26): for float32 inputs, two
    values (or a value and 0) closer than float32's smallest normal are one and the same for JAX.
    """
    f32 = any(a.dtype == np.float32 for a in case.arrays.values())
    return tol * PROJECTION_SPREAD + (2 * float(np.finfo(np.float32).tiny) if f32 else 0.0)


def float32_exact(a: np.ndarray) -> np.ndarray:
    """A float parameter array (a target y) rounded to float32: params are not cast with the cell's
    dtype, so the float32 sides would use y rounded to float32 while the numeric oracle (float64)
    uses y itself: two different points, and a - y cancels where a == y."""
    return a.astype(np.float32).astype(np.float64)
