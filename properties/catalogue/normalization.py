"""Batch normalisation (train mode) and layer normalisation, (N, D) inputs."""
import numpy as np
from hypothesis import strategies as st

from ..spec import Case, OpSpec, Tolerance
from ..strategies import dim, float_arrays, shapes
from . import register


def _norm_cases(batch_sizes, feature_sizes, ci):
    def inputs(regime, breadth):
        @st.composite
        def cases(draw):
            n, d = draw(shapes(breadth, ci, st.tuples(dim(*batch_sizes), dim(*feature_sizes))))
            return Case({"x": draw(float_arrays((n, d), regime)),
                         "gamma": draw(float_arrays((d,), "typical")),
                         "beta": draw(float_arrays((d,), "typical"))},
                        {"eps": 1e-5})
        return cases()
    return inputs


def _centering_condition(axis):
    """|x| / σ: x̂ = (x - μ) / σ cancels log10(|x|/σ) digits in x - μ, so two correct implementations
    (two-pass vs fused variance; XLA's CPU mean multiplies by a rounded 1/N) differ by ~eps·|x|/σ
    relative. Measured: near-constant batchnorm dgamma 8.5e-12 relative between JAX and NumPy at
    |x|/σ ≈ 450; torch's layer_norm folds the mean into a bias, giving x̂ ≈ 6e-14 for a constant row."""
    def factor(case):
        x, eps = case.arrays["x"], case.params["eps"]
        sigma = np.sqrt(x.var(axis=axis) + eps)
        return float(np.max(np.abs(x).max(axis=axis) / sigma))
    return factor


def _tolerance(axis):
    return Tolerance(_centering_condition(axis), "condition number |x|/σ of the centring x - μ (see _centering_condition)")


# batchnorm: N >= 2. With N = 1 every column is its own mean (output beta, dx = 0): degenerate, and
# F.batch_norm refuses it in training ("Expected more than 1 value per channel").
register(OpSpec(name="batchnorm", family="normalization", source="cs231n (batchnorm_backward_alt)",
                inputs=_norm_cases((2, 3, 5), (1, 3, 4), ci=((2, 1), (3, 4))), regimes=("typical", "near_constant"),
                tolerance=_tolerance(0)))
register(OpSpec(name="layernorm", family="normalization", source="cs231n (layernorm_backward)",
                inputs=_norm_cases((1, 3, 4), (2, 3, 5), ci=((1, 2), (4, 3))), regimes=("typical", "near_constant"),
                tolerance=_tolerance(1)))
