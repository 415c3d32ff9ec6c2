"""Softmax and log-softmax over the class axis, as layers (their Jacobian-vector products)."""
from hypothesis import strategies as st

from ..spec import Case, OpSpec
from ..strategies import dim, float_arrays, shapes
from . import register


def _scores(regime, breadth):
    @st.composite
    def cases(draw):
        # C = 1: a single class, softmax = 1, gradient 0 (ci: a row of 4, 3 rows of 7, 3 rows of 1)
        n, c = draw(shapes(breadth, ((1, 4), (3, 7), (3, 1)), st.tuples(dim(1, 3), dim(4, 1, 7))))
        return Case({"x": draw(float_arrays((n, c), regime))})
    return cases()


REGIMES = ("typical", "large", "overflow")
register(OpSpec(name="softmax", family="softmax", source="cs231n; seed 000 § Softmax",
                inputs=_scores, regimes=REGIMES))
register(OpSpec(name="log_softmax", family="softmax", source="seed 000 § 1、KNN, SVM, Softmax，Network (d log SoftMax)",
                inputs=_scores, regimes=REGIMES))
