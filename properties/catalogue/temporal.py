"""Per-timestep layers of captioning RNNs: temporal affine and the masked temporal softmax loss."""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..spec import Case, OpSpec, register
from ..strategies import dim, float_arrays, labels

NT = ((1, 1), (2, 3), (3, 2))  # (N, T): batch 1 with T = 1 first


def _affine_cases(regime):
    @st.composite
    def cases(draw):
        (n, t), (d, m) = draw(st.sampled_from(NT)), draw(st.sampled_from(((3, 2), (2, 4), (4, 1))))
        return Case({"x": draw(float_arrays((n, t, d), regime)), "w": draw(float_arrays((d, m), "typical")),
                     "b": draw(float_arrays((m,), "typical"))})
    return cases()


def _loss_cases(regime):
    @st.composite
    def cases(draw):
        (n, t), v = draw(st.sampled_from(NT)), draw(dim(4, 1, 6))  # V = 1: a single class
        y = draw(labels(n * t, v)).reshape(n, t)
        mask = draw(hnp.arrays(np.bool_, (n, t)))  # zeros included; an all-zero mask gives loss 0
        return Case({"x": draw(float_arrays((n, t, v), regime))}, {"y": y, "mask": mask})
    return cases()


register(OpSpec(name="temporal_affine", family="temporal", source="cs231n (temporal_affine_backward)",
                inputs=_affine_cases))
register(OpSpec(name="temporal_softmax_loss", family="temporal", source="cs231n (temporal_softmax_loss)",
                inputs=_loss_cases, regimes=("typical", "large", "overflow")))
