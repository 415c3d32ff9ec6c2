"""Word embedding: rows of w picked by integer indices that may repeat."""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..spec import Case, OpSpec, register
from ..strategies import dim, float_arrays


def _embedding_cases(regime):
    @st.composite
    def cases(draw):
        v, d = draw(dim(3, 1, 5)), draw(dim(2, 4))  # V = 1: every index repeats
        n, t = draw(st.sampled_from(((2, 3), (1, 1), (3, 2))))  # N*T > V mostly: repeats guaranteed
        idx = draw(hnp.arrays(np.int64, (n, t), elements=st.integers(0, v - 1)))
        return Case({"w": draw(float_arrays((v, d), regime))}, {"idx": idx})
    return cases()


register(OpSpec(name="embedding", family="embedding", source="cs231n (word_embedding_backward)",
                inputs=_embedding_cases))
