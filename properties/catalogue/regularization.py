"""L2 weight penalty."""
from hypothesis import strategies as st

from ..spec import Case, OpSpec, register
from ..strategies import float_arrays
from ._common import elementwise_shapes


def _weights(regime):
    @st.composite
    def cases(draw):
        w = draw(elementwise_shapes().flatmap(lambda s: float_arrays(s, regime)))
        # dyadic values: the float32 sides and the float64 numeric oracle use the same reg
        return Case({"w": w}, {"reg": draw(st.sampled_from((0.5, 2.0**-10, 0.0)))})  # reg = 0: gradient 0
    return cases()


register(OpSpec(name="l2_regularization", family="regularization",
                source="seed 004 § Assignment 1: two_layer_net (reg·ΣW², dW += 2·reg·W); cs231n",
                inputs=_weights, regimes=("typical", "large")))
