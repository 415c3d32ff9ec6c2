"""Inverted dropout with the mask replayed from a seed (the frameworks' RNG streams differ,
CONVENTIONS row 21), in train and test mode. p is the KEEP probability."""
import numpy as np
from hypothesis import strategies as st

from ..spec import Case, OpSpec
from ..strategies import float_arrays, shapes
from . import register
from ._common import ELEMENTWISE_CI, elementwise_full

# ci: (shape, mode, p) tied together, since mode and p are static for JAX (one compile each): the
# scalar and the rich shape in train mode, the rich shape in test mode. (p stays a float: the cs231n
# adapter hands it to the user's forward in dropout_param.)
CI = ((ELEMENTWISE_CI[0], "train", 0.5), (ELEMENTWISE_CI[1], "train", 0.25), (ELEMENTWISE_CI[1], "test", 0.5))


def _dropout_cases(regime, breadth):
    @st.composite
    def cases(draw):
        # p = 1 keeps everything (train mode is the identity); dyadic, so exact in float32 too
        s, mode, p = draw(shapes(breadth, CI, st.tuples(elementwise_full(), st.sampled_from(("train", "test")),
                                               st.sampled_from((0.5, 1.0, 0.25)))))
        seed = draw(st.integers(0, 2**32 - 1))
        mask = np.asarray(np.random.default_rng(seed).random(s) < p).astype(np.float64)
        return Case({"x": draw(float_arrays(s, regime))}, {"p": p, "mode": mode, "mask": mask})
    return cases()


register(OpSpec(name="dropout", family="dropout", source="seed 003 § dropout",
                inputs=_dropout_cases))
