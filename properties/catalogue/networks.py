"""Whole small networks of the notes as one op each: the sigmoid MLP with squared error (the δ
recursion of the DNN notes) and the two-layer ReLU net with softmax loss and L2 regularisation."""
import numpy as np
from hypothesis import strategies as st

import reference_impl as ref

from ..spec import Case, OpSpec
from ..strategies import float_arrays, labels
from ..subgradient import Validity, in_affine_box
from . import register
from ._common import float32_exact, geometry, kink_tol

W_SCALE = 0.5

# (N, D, H, K): D != H != K, batch 1 first, one output once; the second has all dims distinct (the
# ci profile draws the first two)
MLP_GEOMETRIES = ((1, 2, 3, 1), (3, 4, 2, 5), (2, 3, 5, 2))


def _mlp_cases(regime, breadth):
    @st.composite
    def cases(draw):
        n, d, h, k = draw(geometry(breadth, *MLP_GEOMETRIES))
        return Case({"x": draw(float_arrays((n, d), regime)),
                     "w1": draw(float_arrays((d, h), "typical", scale=W_SCALE)),
                     "b1": draw(float_arrays((h,), "typical", scale=W_SCALE)),
                     "w2": draw(float_arrays((h, k), "typical", scale=W_SCALE)),
                     "b2": draw(float_arrays((k,), "typical", scale=W_SCALE))},
                    {"y": float32_exact(draw(float_arrays((n, k), "typical")))})
    return cases()


# (N, D, H, C, reg): C = 1 is a single class; reg = 0 once. reg is static for JAX, so it is tied to a
# shape (one compile each), and dyadic, so float32 and float64 sides use the same value. The ci
# profile draws the first two: batch 1, and all dims distinct with reg != 0.
NET_GEOMETRIES = ((1, 3, 2, 4, 0.125), (3, 2, 4, 5, 0.0625), (3, 2, 4, 3, 0.0), (5, 4, 3, 1, 0.0625))


def _net_cases(regime, breadth):
    # kinks: integer x, weights and biases, so x w1 + b1 has exact zeros; otherwise the weights
    # are typical and only x follows the regime
    wr = "kinks" if regime == "kinks" else "typical"
    ws = 1.0 if regime == "kinks" else W_SCALE

    @st.composite
    def cases(draw):
        n, d, h, c, reg = draw(geometry(breadth, *NET_GEOMETRIES))
        arrays = {"x": draw(float_arrays((n, d), regime)),
                  "w1": draw(float_arrays((d, h), wr, scale=ws)), "b1": draw(float_arrays((h,), wr, scale=ws)),
                  "w2": draw(float_arrays((h, c), wr, scale=ws)), "b2": draw(float_arrays((c,), wr, scale=ws))}
        return Case(arrays, {"y": draw(labels(n, c)), "reg": reg})
    return cases()


def _hidden(case):
    x, w1, b1 = (case.arrays[k].astype(np.float64) for k in ("x", "w1", "b1"))
    return x @ w1 + b1


def _net_kinks(case, tol):
    # perturbing x or w1 by h moves z = x w1 + b1 by up to ~h * sqrt(D) * max(|w1|, |x|)
    x, w1 = case.arrays["x"], case.arrays["w1"]
    reach = kink_tol(case, tol) * np.sqrt(x.shape[1]) * max(1.0, np.abs(x).max(), np.abs(w1).max())
    n = int((np.abs(_hidden(case)) <= reach).sum())
    return f"{n} hidden pre-activation(s) x w1 + b1 at the ReLU kink 0" if n else None


def _net_subgradient(case, douts, grads):
    # The chain rule with a ReLU derivative λ in [0, 1] at each exact zero of z = x w1 + b1.
    # dscores and dh do not depend on λ (relu(0) = 0 whatever λ is), so the gradient is affine in λ.
    # The chain rule is taken through the catalogue's layer references (checked op by op), not
    # through the network's own backward, which is what is being judged.
    z = _hidden(case)
    kinks = np.argwhere(z == 0)
    if not len(kinks):
        return Validity(True, "no hidden pre-activation is exactly 0 (a near one is straddled by the central "
                              "differences; torch and jax judge the gradient at this point)")
    x, w1, b1, w2, b2 = (case.arrays[k].astype(np.float64) for k in ("x", "w1", "b1", "w2", "b2"))
    y, reg, d = case.params["y"], float(case.params["reg"]), np.asarray(douts[0], np.float64)
    h, relu_cache = ref.relu_forward(z)
    scores, scores_cache = ref.affine_forward(h, w2, b2)
    _, loss_cache = ref.softmax_cross_entropy_forward(scores, y=y)
    dh, dw2, db2 = ref.affine_backward(ref.softmax_cross_entropy_backward(d, loss_cache), scores_cache)
    _, hidden_cache = ref.affine_forward(x, w1, b1)
    dx, dw1, db1 = ref.affine_backward(ref.relu_backward(dh, relu_cache), hidden_cache)  # λ = 0: relu'(0) = 0
    penalty = [ref.l2_regularization_backward(d, ref.l2_regularization_forward(w, reg=reg)[1]) for w in (w1, w2)]

    def flat(parts):
        return np.concatenate([np.ravel(q) for q in parts])

    base = flat([dx, dw1 + penalty[0], db1, dw2 + penalty[1], db2])
    basis = []
    for i, j in kinks:  # λ = 1 at one kink adds dh there, through the first layer
        dz = np.zeros_like(z)
        dz[i, j] = dh[i, j]
        basis.append(flat([*ref.affine_backward(dz, hidden_cache), 0 * w2, 0 * b2]))
    g = np.concatenate([np.ravel(grads[k]) for k in ("x", "w1", "b1", "w2", "b2")])  # keeps the dtype
    return in_affine_box(g, base, basis, what="the hidden ReLUs")


register(OpSpec(name="mlp_sigmoid_mse", family="networks", source="seed 000 § DNN; seed 001 § back prop",
                inputs=_mlp_cases, regimes=("typical", "saturated")))
# hidden ReLU at exactly 0: F.relu and jax.nn.relu give 0 (CONVENTIONS row 1), as the reference does
register(OpSpec(name="two_layer_net", family="networks",
                source="seed 004 § Assignment 1: two_layer_net; cs231n",
                inputs=_net_cases, regimes=("typical", "kinks", "large"),
                kinks=_net_kinks, subgradient=_net_subgradient))
