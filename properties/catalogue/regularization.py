"""L2 weight penalty."""
import numpy as np
from hypothesis import strategies as st

from ..spec import Case, OpSpec
from ..strategies import float_arrays
from . import register
from ._common import elementwise_shapes


def _weights(regime, breadth):
    @st.composite
    def cases(draw):
        w = draw(float_arrays(draw(elementwise_shapes(breadth)), regime))
        # reg = 0: gradient 0. A 0-d array, so JAX traces it (a float param is static: one compile
        # per value); cast with the cell's dtype like every float array param, and dyadic, so the
        # float32 sides and the float64 numeric oracle use the same number.
        reg = np.asarray(draw(st.sampled_from((0.5, 2.0**-10, 0.0))), dtype=np.float64)
        return Case({"w": w}, {"reg": reg})
    return cases()


register(OpSpec(name="l2_regularization", family="regularization",
                source="seed 004 § Assignment 1: two_layer_net (reg·ΣW², dW += 2·reg·W); cs231n",
                inputs=_weights, regimes=("typical", "large")))
