"""Word embedding: rows of w picked by integer indices that may repeat."""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..spec import Case, OpSpec
from ..strategies import dim, float_arrays, shapes
from . import register


def _embedding_cases(regime, breadth):
    @st.composite
    def cases(draw):
        # V = 1: every index repeats; N*T > V mostly: repeats guaranteed. ci (V, D, N, T): one word in
        # one sequence of one step; 6 indices into 5 rows (a repeat, and maybe unused rows)
        v, d, n, t = draw(shapes(breadth, ((1, 2, 1, 1), (5, 4, 2, 3)),
                                 st.tuples(dim(3, 1, 5), dim(2, 4), st.sampled_from(((2, 3), (1, 1), (3, 2))))
                                 .map(lambda g: (g[0], g[1], *g[2]))))
        idx = draw(hnp.arrays(np.int64, (n, t), elements=st.integers(0, v - 1)))
        return Case({"w": draw(float_arrays((v, d), regime))}, {"idx": idx})
    return cases()


register(OpSpec(name="embedding", family="embedding", source="cs231n (word_embedding_backward)",
                inputs=_embedding_cases))
