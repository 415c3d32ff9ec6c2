"""Batch normalisation (train mode) and layer normalisation of (N, D) inputs; spatial batch and group
normalisation of NCHW inputs; batchnorm's test mode and running statistics."""
import numpy as np
from hypothesis import strategies as st

from ..spec import Case, OpSpec, Tolerance
from ..strategies import dim, float_arrays, geometry, shapes
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


# ---- spatial (NCHW) batch and group normalisation ------------------------------------------------

def _grouped_condition(groups):
    """_centering_condition for NCHW inputs: the largest |x|/σ over the sets of values normalised
    together; `groups(case)` is x reshaped so that axis 0 runs over those sets and the rest are flat."""
    def factor(case):
        g = groups(case)
        sigma = np.sqrt(g.var(axis=1) + case.params["eps"])
        return float(np.max(np.abs(g).max(axis=1) / sigma))
    return Tolerance(factor, "condition number |x|/σ of the centring x - μ per normalised set (see _centering_condition)")


def _channels(case):  # spatial batchnorm: one set per channel, its N·H·W values
    x = case.arrays["x"]
    return x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1)


def _groups(case):  # group norm: one set per (sample, group), its C/G·H·W values
    x = case.arrays["x"]
    return x.reshape(x.shape[0] * case.params["G"], -1)


# (N, C, H, W): H != W throughout. N = 1 is fine here (a channel still has H·W > 1 values).
SPATIAL_BN_GEOMETRIES = (
    (1, 2, 2, 3),  # batch 1: each channel normalised over its 6 positions
    (2, 3, 3, 2),  # N, C, H, W distinct where they can be: a wrong axis or a transposed layout shows
    (3, 1, 1, 2),  # one channel, a row of 2
    (2, 4, 2, 1),
)
# (N, C, H, W, G): G divides C; G = 1 (layer norm over C, H, W), 1 < G < C, G = C (instance norm);
# never a group of one value (x̂ = 0 and dx = 0 whatever the code). The ci profile's three come first.
SPATIAL_GN_GEOMETRIES = (
    (1, 2, 2, 3, 1),  # batch 1, G = 1: one group of 12 values
    (2, 6, 2, 3, 3),  # 1 < G < C: groups of 2 channels; N, C/G, H, W not all equal
    (2, 3, 3, 2, 3),  # G = C: instance norm over 6 positions
    (3, 4, 1, 2, 2),
    (1, 4, 2, 1, 4),  # G = C with groups of 2 values
    (2, 2, 3, 1, 1),
)


def _spatial_bn_cases(regime, breadth):
    @st.composite
    def cases(draw):
        n, c, h, w = draw(geometry(breadth, *SPATIAL_BN_GEOMETRIES))
        return Case({"x": draw(float_arrays((n, c, h, w), regime)), "gamma": draw(float_arrays((c,), "typical")),
                     "beta": draw(float_arrays((c,), "typical"))}, {"eps": 1e-5})
    return cases()


def _spatial_gn_cases(regime, breadth):
    @st.composite
    def cases(draw):
        n, c, h, w, groups = draw(geometry(breadth, *SPATIAL_GN_GEOMETRIES, ci=3))
        return Case({"x": draw(float_arrays((n, c, h, w), regime)),
                     "gamma": draw(float_arrays((1, c, 1, 1), "typical")),
                     "beta": draw(float_arrays((1, c, 1, 1), "typical"))}, {"G": groups, "eps": 1e-5})
    return cases()


register(OpSpec(name="spatial_batchnorm", family="normalization", source="cs231n (spatial_batchnorm_backward)",
                inputs=_spatial_bn_cases, regimes=("typical", "near_constant"), tolerance=_grouped_condition(_channels)))
register(OpSpec(name="spatial_groupnorm", family="normalization", source="cs231n (spatial_groupnorm_backward)",
                inputs=_spatial_gn_cases, regimes=("typical", "near_constant"), tolerance=_grouped_condition(_groups)))


# ---- batchnorm's test mode and running statistics ---------------------------------------------

def _running_cases(regime, breadth):
    @st.composite
    def cases(draw):
        n, d = draw(shapes(breadth, ((1, 2), (3, 4)), st.tuples(dim(1, 2, 3, 5), dim(1, 3, 4))))
        # running_var >= 0, exact zeros included: cs231n starts it at np.zeros(D), and test mode before
        # any training divides by sqrt(eps). momentum is a 0-d array param (one JAX compile for all);
        # 0.9 is cs231n's default, 0 keeps only the batch, and any momentum but 0.5 tells
        # momentum·old + (1 - momentum)·new from the other way round.
        momentum = draw(st.sampled_from((0.9, 0.0, 0.75)))
        return Case({"x": draw(float_arrays((n, d), regime)), "gamma": draw(float_arrays((d,), "typical")),
                     "beta": draw(float_arrays((d,), "typical"))},
                    {"running_mean": draw(float_arrays((d,), "typical")),
                     "running_var": draw(float_arrays((d,), "typical")) ** 2,
                     "momentum": np.asarray(momentum), "eps": 1e-5})
    return cases()


# No centring by the batch's own mean in the output (test mode subtracts a given running mean), so no
# condition factor: the near-constant regime is there for the running variance of a near-constant batch.
register(OpSpec(name="batchnorm_running", family="normalization",
                source="cs231n (batchnorm_forward: test mode, running_mean / running_var)",
                inputs=_running_cases, regimes=("typical", "near_constant")))
