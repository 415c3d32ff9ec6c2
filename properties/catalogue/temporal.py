"""Per-timestep layers of captioning RNNs: temporal affine and the masked temporal softmax loss."""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..spec import Case, OpSpec
from ..strategies import dim, float_arrays, labels, shapes
from . import register

NT = ((1, 1), (2, 3), (3, 2))  # (N, T): batch 1 with T = 1 first


def _affine_cases(regime, breadth):
    @st.composite
    def cases(draw):
        # ci (N, T, D, M): one step of one sequence; N, T, D, M distinct
        n, t, d, m = draw(shapes(breadth, ((1, 1, 3, 2), (2, 3, 4, 5)),
                                 st.tuples(st.sampled_from(NT), st.sampled_from(((3, 2), (2, 4), (4, 1))))
                                 .map(lambda g: (*g[0], *g[1]))))
        return Case({"x": draw(float_arrays((n, t, d), regime)), "w": draw(float_arrays((d, m), "typical")),
                     "b": draw(float_arrays((m,), "typical"))})
    return cases()


def _loss_cases(regime, breadth):
    @st.composite
    def cases(draw):
        # V = 1: a single class. ci (N, T, V): one step of 4 classes; N, T, V distinct; one class
        n, t, v = draw(shapes(breadth, ((1, 1, 4), (2, 3, 4), (3, 2, 1)),
                              st.tuples(st.sampled_from(NT), dim(4, 1, 6)).map(lambda g: (*g[0], g[1]))))
        y = draw(labels(n * t, v)).reshape(n, t)
        mask = draw(hnp.arrays(np.bool_, (n, t)))  # zeros included; an all-zero mask gives loss 0
        return Case({"x": draw(float_arrays((n, t, v), regime))}, {"y": y, "mask": mask})
    return cases()


register(OpSpec(name="temporal_affine", family="temporal", source="cs231n (temporal_affine_backward)",
                inputs=_affine_cases))
register(OpSpec(name="temporal_softmax_loss", family="temporal", source="cs231n (temporal_softmax_loss)",
                inputs=_loss_cases, regimes=("typical", "large", "overflow")))
