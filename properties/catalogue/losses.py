"""Losses: softmax cross-entropy, squared error, multiclass SVM hinge."""
import numpy as np
from hypothesis import strategies as st

from ..spec import Case, OpSpec
from ..strategies import dim, float_arrays, labels, shapes
from ..subgradient import agrees, fraction_of
from . import register
from ._common import elementwise_shapes, float32_exact, kink_tol


def _scores_and_labels(regime, breadth):
    @st.composite
    def cases(draw):
        # C = 1: a single class (loss 0, gradient 0). ci: one row of 4, 2 rows of 7 (a missing 1/N
        # shows), 5 rows of 1
        n, c = draw(shapes(breadth, ((1, 4), (2, 7), (5, 1)), st.tuples(dim(1, 2, 5), dim(4, 1, 7))))
        return Case({"x": draw(float_arrays((n, c), regime))}, {"y": draw(labels(n, c))})
    return cases()


def _mse_cases(regime, breadth):
    @st.composite
    def cases(draw):
        s = draw(elementwise_shapes(breadth))
        return Case({"a": draw(float_arrays(s, regime))}, {"y": float32_exact(draw(float_arrays(s, regime)))})
    return cases()


def _margins(case):
    x, y = case.arrays["x"].astype(np.float64), case.params["y"]
    rows = np.arange(x.shape[0])
    m = x - x[rows, y][:, None] + 1
    other = np.ones(x.shape, bool)
    other[rows, y] = False
    return m, other


def _hinge_kinks(case, tol):
    m, other = _margins(case)
    n = int((other & (np.abs(m) <= kink_tol(case, tol))).sum())
    return f"{n} margin(s) x_j - x_y + 1 at the hinge 0" if n else None


def _hinge_subgradient(case, douts, grads):
    # row n: dx_nj = (dout/N) λ_nj for j != y_n, with λ = [margin > 0] off the hinge and any λ in [0, 1]
    # on it; dx_{n,y_n} = -Σ_{j != y_n} dx_nj whatever the λ are
    m, other = _margins(case)
    g, d = grads["x"], float(douts[0]) / m.shape[0]
    on = other & (m == 0)
    for check in (
            agrees(g, d * (m > 0), other & ~on, name="x", what="at the other classes off the hinge"),
            agrees(g, -np.where(other, g.astype(np.float64), 0).sum(axis=1, keepdims=True), ~other,
                   name="x", what="at the label (minus the row's other entries)"),
            fraction_of(g, d, on, name="x", what="margin 0")):
        if not check.ok:
            return check
    return check


register(OpSpec(name="softmax_cross_entropy", family="losses", source="seed 003 § softmax ce loss; seed 000 § Softmax",
                inputs=_scores_and_labels, regimes=("typical", "large", "overflow")))
register(OpSpec(name="mse", family="losses", source="seed 000 § DNN; seed 001 § back prop",
                inputs=_mse_cases, regimes=("typical", "large", "overflow")))
# A margin of exactly 0: multi_margin_loss counts only `z > 0` and jax.nn.relu gives 0 at 0, as the
# reference does (CONVENTIONS rows 1 and 24); the central difference there is 1/2.
register(OpSpec(name="svm_hinge", family="losses", source="cs231n (assignment 1, multiclass SVM)",
                inputs=_scores_and_labels, regimes=("typical", "large", "overflow", "kinks"),
                kinks=_hinge_kinks, subgradient=_hinge_subgradient))
