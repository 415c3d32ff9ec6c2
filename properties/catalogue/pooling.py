"""Max- and average-pooling, NCHW, no padding; the stride may differ from the window."""
import numpy as np
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from ..spec import Case, OpSpec
from ..strategies import float_arrays
from ..subgradient import shared_credit
from . import register
from ._common import geometry, kink_tol
from .conv import hidden_swaps, input_size

# (N, C, (pool_height, pool_width), stride, (H', W'), slack (h, w)). The first two (the ci
# profile's) are the edge and the rich geometry; the rich one hides no height/width swap
# (conv.hidden_swaps, checked below): stride 2, a remainder in H and none in W.
GEOMETRIES = (
    (1, 1, (2, 2), 2, (1, 2), (0, 0)),  # batch 1, non-overlapping windows
    (2, 3, (3, 2), 2, (3, 2), (1, 0)),  # overlapping in H only, stride != 1; the floor drops a row
    (2, 3, (3, 2), 1, (4, 3), (0, 0)),  # overlapping in both directions
    (2, 1, (1, 2), 3, (2, 1), (2, 1)),  # stride larger than the window: some inputs in no window
    (2, 2, (3, 2), 1, (1, 1), (0, 0)),  # one window covering the whole input
    (1, 2, (2, 3), 2, (3, 2), (1, 1)),  # overlapping in W only; the floor drops a row and a column
)
for _i, _g in enumerate(GEOMETRIES):
    _h, _w = input_size(_g[4][0], _g[2][0], _g[3], 0, _g[5][0]), input_size(_g[4][1], _g[2][1], _g[3], 0, _g[5][1])
    _hidden = hidden_swaps(_h, _w, *_g[2], stride=_g[3], pad=0)
    assert _i != 1 or not _hidden, (_g, _hidden)


def _pool_cases(regime, breadth):
    @st.composite
    def cases(draw):
        n, c, (ph, pw), stride, (ho, wo), (rh, rw) = draw(geometry(breadth, *GEOMETRIES))
        h, w = input_size(ho, ph, stride, 0, rh), input_size(wo, pw, stride, 0, rw)
        return Case({"x": draw(float_arrays((n, c, h, w), regime))},
                    {"pool_height": ph, "pool_width": pw, "stride": stride})
    return cases()


def _windows(case):
    """(values, flat indices into x) of every window: (N, C, H', W', ph*pw) each."""
    x, p = case.arrays["x"].astype(np.float64), case.params
    ph, pw, s = p["pool_height"], p["pool_width"], p["stride"]
    idx = np.arange(x.size).reshape(x.shape)
    view = lambda a: sliding_window_view(a, (ph, pw), axis=(2, 3))[:, :, ::s, ::s]  # noqa: E731
    vals, ids = view(x), view(idx)
    return vals.reshape(*vals.shape[:4], -1), ids.reshape(*ids.shape[:4], -1)


def _pool_kinks(case, tol):
    vals, _ = _windows(case)
    if vals.shape[-1] < 2:
        return None
    top2 = np.sort(vals, axis=-1)[..., -2:]
    n = int((top2[..., 1] - top2[..., 0] <= kink_tol(case, tol)).sum())
    return f"{n} pooling window(s) with tied maxima" if n else None


def _pool_subgradient(case, douts, grads):
    # every window hands its upstream gradient to its maxima (exact ties at this point), overlapping
    # windows adding up: a convex combination per window, checked by shared_credit
    vals, ids = _windows(case)
    d = np.asarray(douts[0], np.float64)
    if d.shape != vals.shape[:4]:  # the target's forward gave an output of another shape: no windows to credit
        return False, (f"the upstream gradient has the target's output shape {list(d.shape)}, not the "
                       f"pooling windows' {list(vals.shape[:4])}: the forward's output has the wrong shape")
    vmax = vals.max(axis=-1, keepdims=True)
    flat_v, flat_i, flat_d = vals.reshape(-1, vals.shape[-1]), ids.reshape(-1, ids.shape[-1]), d.reshape(-1)
    is_max = flat_v == vmax.reshape(-1, 1)
    groups = [(flat_d[k], flat_i[k][is_max[k]]) for k in range(flat_d.size)]
    return shared_credit(grads["x"], groups, name="x", what="pooling windows")


# Ties inside a window: F.max_pool2d (CPU: strict `>` scan) and lax.reduce_window's VJP
# (select_and_scatter_add with `ge`) both give the whole gradient to the FIRST maximum in row-major
# order, window by window (CONVENTIONS row 7), as the reference does. The central difference at an
# exact tie of k elements gives each of them 1/2 (only +h makes an element the unique maximum):
# straddled, and not even a convex combination for k > 2.
register(OpSpec(name="max_pool2d", family="pooling", source="seed 001 § 池化层 (max pooling); cs231n",
                inputs=_pool_cases, regimes=("typical", "kinks"),
                kinks=_pool_kinks, subgradient=_pool_subgradient))
register(OpSpec(name="avg_pool2d", family="pooling", source="seed 001 § 池化层 (mean pooling)",
                inputs=_pool_cases))
