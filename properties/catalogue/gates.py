"""Scalar chain-rule gates of the worked examples, elementwise on arrays of one shape S (S = () too)."""
import numpy as np
from hypothesis import strategies as st

from ..spec import Case, OpSpec
from ..strategies import dim, float_arrays, shapes
from ..subgradient import shared_credit
from . import register
from ._common import elementwise_shapes, kink_tol


def _same_shape(*names):
    def inputs(regime, breadth):
        @st.composite
        def cases(draw):
            s = draw(elementwise_shapes(breadth))
            return Case({n: draw(float_arrays(s, regime)) for n in names})
        return cases()
    return inputs


def _max_gate_kinks(case, tol):
    x, y = case.arrays["x"].astype(np.float64), case.arrays["y"].astype(np.float64)
    n = int((np.abs(x - y) <= kink_tol(case, tol)).sum())
    return f"{n} element(s) with x == y (a tie of the max gate)" if n else None


def _max_gate_subgradient(case, douts, grads):
    # each element is a group {x_i, y_i} handing dout_i to its maximum, or splitting it at a tie
    x, y = case.arrays["x"].reshape(-1), case.arrays["y"].reshape(-1)
    d, n = np.asarray(douts[0], np.float64).reshape(-1), x.size
    groups = [(d[i], [i] if x[i] > y[i] else [n + i] if y[i] > x[i] else [i, n + i]) for i in range(n)]
    both = np.concatenate([grads["x"].reshape(-1), grads["y"].reshape(-1)])
    return shared_credit(both, groups, name="x, y", what="max(x, y)")


def _neuron_cases(regime, breadth):
    @st.composite
    def cases(draw):
        n = draw(shapes(breadth, (1, 3), dim(3, 1, 5)))  # ci: batch 1, and 3
        return Case({"w": draw(float_arrays((3,), "typical")), "x": draw(float_arrays((n, 2), regime))})
    return cases()


register(OpSpec(name="add_gate", family="gates", source="seed 004 § Patterns in backward flow: add gate",
                inputs=_same_shape("x", "y")))
register(OpSpec(name="multiply_gate", family="gates", source="seed 004 § Patterns in backward flow: multiply gate",
                inputs=_same_shape("x", "y"), regimes=("typical", "large")))
# torch.maximum and lax.max split a tie 1/2 : 1/2 (CONVENTIONS row 2), as the reference does; the
# central difference at an exact tie is 1/2 too, but straddles a near tie.
register(OpSpec(name="max_gate", family="gates", source="seed 004 § Patterns in backward flow: max gate",
                inputs=_same_shape("x", "y"), regimes=("typical", "kinks"),
                kinks=_max_gate_kinks, subgradient=_max_gate_subgradient))
register(OpSpec(name="sigmoid_neuron", family="gates", source="seed 002 § 6.实例四; seed 004 § sigmoid gate",
                inputs=_neuron_cases, regimes=("typical", "saturated")))
register(OpSpec(name="chain_rule_example", family="gates", source="seed 002 § 3.实例一",
                inputs=_same_shape("x", "y", "z")))
