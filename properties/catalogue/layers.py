"""Affine layers: the row layout of cs231n and the column layout of the notes."""
import numpy as np
from hypothesis import strategies as st

from ..spec import Case, OpSpec
from ..strategies import dim, float_arrays, shapes
from . import register

# ci: (N, (d1, ..., dk), M): batch 1 with one output; a batch of 2 with two trailing dims, N, d1, d2,
# D = 12 and M all distinct
AFFINE_CI = ((1, (2,), 1), (2, (3, 4), 5))


def _affine_cases(regime, breadth):
    @st.composite
    def cases(draw):
        # k = 1..3 trailing dims, so x is N x d1 x ... x dk; D != M is likely but not forced (ci: forced)
        n, dims, m = draw(shapes(breadth, AFFINE_CI, st.tuples(dim(1, 2, 3), st.lists(dim(2, 3), min_size=1, max_size=3),
                                                      dim(1, 4, 3))))
        d = int(np.prod(dims))
        x = draw(float_arrays((n, *dims), regime))
        w = draw(float_arrays((d, m), "typical"))
        b = draw(float_arrays((m,), "typical"))
        return Case({"x": x, "w": w, "b": b})
    return cases()


def _column_cases(regime, breadth):
    @st.composite
    def cases(draw):
        # Y (M, N) = W (M, D) X (D, N) + B (M, 1): three distinct sizes make a transpose ill-typed
        # (ci: one output and one column; M, D, N = 4, 3, 2)
        m, d, n = draw(shapes(breadth, ((1, 3, 1), (4, 3, 2)), st.tuples(dim(1, 2, 4), dim(1, 3, 5), dim(1, 2, 3))))
        return Case({"w": draw(float_arrays((m, d), regime)), "x": draw(float_arrays((d, n), regime)),
                     "b": draw(float_arrays((m, 1), regime))})
    return cases()


register(OpSpec(name="affine", family="layers", source="cs231n; seed 003 § 线性层（全连接层）; seed 000 § DNN",
                inputs=_affine_cases, regimes=("typical", "large")))
register(OpSpec(name="linear_column", family="layers", source="seed 002 § 8.3.举例",
                inputs=_column_cases))
