"""Inverted dropout with the mask replayed from a seed (the frameworks' RNG streams differ,
CONVENTIONS row 21), in train and test mode. p is the KEEP probability."""
import numpy as np
from hypothesis import strategies as st

from ..spec import Case, OpSpec, register
from ..strategies import float_arrays
from ._common import elementwise_shapes


def _dropout_cases(regime):
    @st.composite
    def cases(draw):
        s = draw(elementwise_shapes())
        # p = 1 keeps everything (train mode is the identity); dyadic, so exact in float32 too
        p = draw(st.sampled_from((0.5, 1.0, 0.25)))
        mode = draw(st.sampled_from(("train", "test")))
        seed = draw(st.integers(0, 2**32 - 1))
        mask = np.asarray(np.random.default_rng(seed).random(s) < p).astype(np.float64)
        return Case({"x": draw(float_arrays(s, regime))}, {"p": p, "mode": mode, "mask": mask})
    return cases()


register(OpSpec(name="dropout", family="dropout", source="seed 003 § dropout",
                inputs=_dropout_cases))
