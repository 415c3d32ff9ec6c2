"""Elementwise activations: ReLU, sigmoid, tanh."""
import numpy as np
from hypothesis import strategies as st

from ..spec import Case, OpSpec
from ..strategies import float_arrays
from ..subgradient import agrees, fraction_of
from . import register
from ._common import elementwise_shapes, kink_tol


def _elementwise_cases(regime, breadth):
    @st.composite
    def cases(draw):
        return Case({"x": draw(float_arrays(draw(elementwise_shapes(breadth)), regime))})
    return cases()


def _zero_kink(case, tol):
    n = int((np.abs(case.arrays["x"]) <= kink_tol(case, tol)).sum())
    return f"{n} element(s) of x at the ReLU kink x = 0" if n else None


def _relu_subgradient(case, douts, grads):
    x, d = case.arrays["x"], np.asarray(douts[0], np.float64)
    away = agrees(grads["x"], d * (x > 0), x != 0, name="x", what="away from x = 0")
    return fraction_of(grads["x"], d, x == 0, name="x", what="x = 0") if away.ok else away


# ReLU at exactly 0: F.relu and jax.nn.relu give 0 (CONVENTIONS row 1; jnp.maximum(x, 0) would give
# 1/2), as the reference does; the central difference there is 1/2, a straddled kink.
register(OpSpec(name="relu", family="activations", source="cs231n; seed 004 § ReLU梯度的计算",
                inputs=_elementwise_cases, regimes=("typical", "kinks"), kinks=_zero_kink,
                subgradient=_relu_subgradient))
register(OpSpec(name="sigmoid", family="activations", source="seed 003 § sigmoid; seed 004 § sigmoid gate",
                inputs=_elementwise_cases, regimes=("typical", "saturated")))
register(OpSpec(name="tanh", family="activations", source="cs231n; seed 000 § RNN (tanh' = 1 - h²)",
                inputs=_elementwise_cases, regimes=("typical", "saturated")))
