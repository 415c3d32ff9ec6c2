"""Whole small networks of the notes as one op each: the sigmoid MLP with squared error (the δ
recursion of the DNN notes) and the two-layer ReLU net with softmax loss and L2 regularisation."""
import numpy as np
from hypothesis import strategies as st

from ..spec import Case, OpSpec, register
from ..strategies import float_arrays, labels
from ..subgradient import in_affine_box
from ._common import float32_exact, geometry, kink_tol

W_SCALE = 0.5

# (N, D, H, K): D != H != K, batch 1 first, one output once; the second has all dims distinct (the
# ci profile draws the first two)
MLP_GEOMETRIES = ((1, 2, 3, 1), (3, 4, 2, 5), (2, 3, 5, 2))


def _mlp_cases(regime):
    @st.composite
    def cases(draw):
        n, d, h, k = draw(geometry(*MLP_GEOMETRIES))
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


def _net_cases(regime):
    # kinks: integer x, weights and biases, so x w1 + b1 has exact zeros; otherwise the weights
    # are typical and only x follows the regime
    wr = "kinks" if regime == "kinks" else "typical"
    ws = 1.0 if regime == "kinks" else W_SCALE

    @st.composite
    def cases(draw):
        n, d, h, c, reg = draw(geometry(*NET_GEOMETRIES))
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
    z = _hidden(case)
    kinks = np.argwhere(z == 0)
    if not len(kinks):
        return True, ("no hidden pre-activation is exactly 0 (a near one is straddled by the central "
                      "differences; torch and jax judge the gradient at this point)")
    x, w1, w2, b2 = (case.arrays[k].astype(np.float64) for k in ("x", "w1", "w2", "b2"))
    y, reg, d = case.params["y"], float(case.params["reg"]), float(np.asarray(douts[0]))
    n = x.shape[0]
    h = np.maximum(z, 0)
    s = h @ w2 + b2
    p = np.exp(s - s.max(axis=1, keepdims=True))
    dscores = p / p.sum(axis=1, keepdims=True)
    dscores[np.arange(n), y] -= 1
    dscores *= d / n
    dh = dscores @ w2.T

    def through(dz):  # (dx, dw1, db1) of a gradient dz at the hidden pre-activations
        return [dz @ w1.T, x.T @ dz, dz.sum(axis=0)]

    flat = lambda parts: np.concatenate([np.ravel(q) for q in parts])  # noqa: E731
    base = flat([*through(dh * (z > 0)), h.T @ dscores, dscores.sum(axis=0)])
    base += flat([0 * x, 2 * reg * d * w1, 0 * h[0], 2 * reg * d * w2, 0 * b2])
    basis = []
    for i, j in kinks:
        dz = np.zeros_like(z)
        dz[i, j] = dh[i, j]
        basis.append(flat([*through(dz), 0 * w2, 0 * b2]))
    g = np.concatenate([np.ravel(grads[k]) for k in ("x", "w1", "b1", "w2", "b2")])  # keeps the dtype
    return in_affine_box(g, base, basis, what="the hidden ReLUs")


register(OpSpec(name="mlp_sigmoid_mse", family="networks", source="seed 000 § DNN; seed 001 § back prop",
                inputs=_mlp_cases, regimes=("typical", "saturated")))
# hidden ReLU at exactly 0: F.relu and jax.nn.relu give 0 (CONVENTIONS row 1), as the reference does
register(OpSpec(name="two_layer_net", family="networks",
                source="seed 004 § Assignment 1: two_layer_net; cs231n",
                inputs=_net_cases, regimes=("typical", "kinks", "large"),
                kinks=_net_kinks, subgradient=_net_subgradient))
