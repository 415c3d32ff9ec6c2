"""Linear classifiers of cs231n assignment 1: the multiclass SVM and softmax over s = X W, with L2
regularisation of W. W is differentiated; X, y, reg and the regularisation convention are params."""
import numpy as np
from hypothesis import strategies as st

from oracles.numeric import STEP

from ..spec import Case, OpSpec, Tolerance
from ..strategies import float_arrays, geometry, labels
from ..subgradient import in_affine_box
from ..tolerances import NUMERIC_RTOL
from . import register
from ._common import kink_tol

# (N, D, C, reg, reg_scale): D != C; reg dyadic (the same value in float32 and float64); reg_scale 1
# (reg·ΣW², gradient 2·reg·W) or 0.5 (½·reg·ΣW², gradient reg·W), the conventions of the assignment's
# years. Both are static for JAX, so tied to a shape. The ci profile draws the first two: batch 1, and
# all dims distinct with N > 1 (a missing 1/N shows), one per convention. Then reg = 0, and C = 1 (a
# single class: the data loss is 0).
GEOMETRIES = ((1, 3, 4, 0.5, 1.0), (4, 3, 5, 0.25, 0.5), (5, 2, 3, 0.0, 1.0), (3, 4, 1, 0.125, 0.5))


def _cases(regime, breadth):
    # the scores follow the regime through X (overflow: logits ~1e3 apart); W stays typical, except
    # at kinks, where integer X and W give integer scores and so exact hinge margins of 0
    wr = "kinks" if regime == "kinks" else "typical"

    @st.composite
    def cases(draw):
        n, d, c, reg, reg_scale = draw(geometry(breadth, *GEOMETRIES))
        return Case({"W": draw(float_arrays((d, c), wr))},
                    {"X": draw(float_arrays((n, d), regime)), "y": draw(labels(n, c)), "reg": reg,
                     "reg_scale": reg_scale})
    return cases()


def _margins(case):
    X, W, y = (np.asarray(case.params["X"], np.float64), case.arrays["W"].astype(np.float64), case.params["y"])
    s = X @ W
    rows = np.arange(X.shape[0])
    m = s - s[rows, y][:, None] + 1
    other = np.ones(m.shape, bool)
    other[rows, y] = False
    return X, m, other


def _svm_kinks(case, tol):
    # moving W by h moves a margin s_j - s_y + 1 by up to ~h * 2 * sqrt(D) * max|X|
    X, m, other = _margins(case)
    reach = kink_tol(case, tol) * 2 * np.sqrt(X.shape[1]) * max(1.0, float(np.abs(X).max(initial=0.0)))
    n = int((other & (np.abs(m) <= reach)).sum())
    return f"{n} margin(s) s_j - s_y + 1 at the hinge 0" if n else None


def _svm_subgradient(case, douts, grads):
    # dW = X^T G + 2 reg_scale reg dout W, G[n, j] = (dout/N) λ_nj for j != y_n (λ = [margin > 0] off
    # the hinge, any λ in [0, 1] on it) and G[n, y_n] = -Σ_j G[n, j]: affine in the λ of the kinks
    X, m, other = _margins(case)
    n = X.shape[0]
    d = float(np.asarray(douts[0]))
    W = case.arrays["W"].astype(np.float64)
    y = case.params["y"]
    r = float(case.params["reg"]) * float(case.params.get("reg_scale", 1.0))

    def through(g):  # dW of a gradient g at the scores: the label column takes minus the row's sum
        g = np.where(other, g, 0.0)
        g[np.arange(n), y] = -g.sum(axis=1)
        return X.T @ g

    base = (through((m > 0) * (d / n)) + 2 * r * d * W).ravel()
    basis = []
    for i, j in np.argwhere(other & (m == 0)):
        e = np.zeros_like(m)
        e[i, j] = d / n
        basis.append(through(e).ravel())
    return in_affine_box(grads["W"], base, basis, what="the hinge margins")


register(OpSpec(name="linear_svm", family="linear classifiers", source="cs231n (assignment 1, linear_svm.py)",
                inputs=_cases, regimes=("typical", "large", "overflow", "kinks"),
                kinks=_svm_kinks, subgradient=_svm_subgradient))
def _softmax_curvature(case):
    """The finite differences step W by h = STEP·max(1, |W|), which moves the scores X W by h·|X|: their
    truncation error relative to the gradient is ~κ3·(h·|X|)², κ3 = p(1-p)(1-2p) ≤ 0.1 the softmax's
    third cumulant. Measured: 3.3e-5 relative (policy 1e-5) at max|X| = 2104, W = 3 (all scores tied,
    overflow regime). The factor is 1 below |X| ~ 500."""
    h = STEP * max(1.0, float(np.abs(case.arrays["W"]).max(initial=0.0)))
    return max(1.0, (h * float(np.abs(np.asarray(case.params["X"])).max(initial=0.0))) ** 2 / (10 * NUMERIC_RTOL))


register(OpSpec(name="linear_softmax", family="linear classifiers", source="cs231n (assignment 1, softmax.py)",
                inputs=_cases, regimes=("typical", "large", "overflow"),
                tolerance=Tolerance(_softmax_curvature, "finite differences in W move the scores by h·|X|: "
                                    "truncation ~0.1·(h·|X|)² relative for logits ~1e3 (overflow regime)")))
