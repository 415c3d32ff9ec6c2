"""The cs231n model classes' networks, for auditing a user's class (gradaudit/models.py): parameter
layouts, cases, and where a case sits near a kink. Registers no op: a model is not a derivation of
ours; its oracles are the framework forwards `fc_net`, `conv_net` and `captioning_rnn` of
oracles/torch_ops.py and oracles/jax_ops.py, built from the catalogue's ops, and its finite
differences differentiate the user's own `loss`.

Parameters are drawn from seeded NumPy generators, never element by element: continuous values
put no hidden unit exactly on the ReLU kink and no two pooled values in an exact tie, so torch and
JAX judge every case at a differentiable point; the finite differences, which straddle near kinks,
are told about those (`kinks`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from hypothesis import strategies as st

import reference_impl as R

from ..spec import Case, Tolerance
from ..strategies import float_arrays, geometry, labels
from ._common import kink_tol

NULL = 0  # the <NULL> token of the captioning vocabulary
EPS = 1e-5  # the assignments' batch/layer norm eps (bn_param.get("eps", 1e-5))


@dataclass(frozen=True)
class Network:
    """One architecture: what the user's class is checked as."""

    op: str  # the framework forward (oracles.torch_ops / oracles.jax_ops)
    geometries: tuple  # complete geometries, the simplest first; the ci profile draws the first two
    layout: Callable  # (geometry, variant) -> {param name: shape}, in the framework forward's order
    data: Callable  # (draw, geometry, variant, regime, test) -> params of a case
    role: Callable  # param name -> what it is in the network, for messages
    kinks: Callable | None = None  # (case, tol) -> why the case is near a kink, or None
    penalised: Callable = lambda name: False  # is this param in the L2 penalty?
    tolerance: Tolerance | None = None


def _param_draw(draw, shapes: dict, fan_in: dict) -> dict:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    out = {}
    for name, shape in shapes.items():
        if name.startswith("gamma"):
            a = rng.uniform(0.5, 1.5, shape)  # a scale near 1, away from 0
        elif name.startswith(("b", "beta")) and len(shape) == 1:
            a = rng.standard_normal(shape) * 0.5
        else:  # weights: unit-variance activations whatever the fan-in
            a = rng.standard_normal(shape) / np.sqrt(fan_in.get(name, 1))
        out[name] = np.asarray(a, dtype=np.float64)
    return out


def cases(net: Network, variant: str, regime: str, test: bool, breadth: str, geometries: tuple | None = None):
    """Cases of `net` in `variant` (a normalisation, "dropout", a cell type, or ""): params are the
    differentiable arrays; data, labels and static settings are params. `breadth`: see
    properties.strategies.geometry; `geometries` (default the network's) to draw from."""
    @st.composite
    def draw_case(draw):
        g = draw(geometry(breadth, *(geometries or net.geometries)))
        shapes = net.layout(g, variant)
        fan_in = {n: int(np.prod(s[1:])) if len(s) == 4 else s[0] for n, s in shapes.items() if len(s) > 1}
        return Case(_param_draw(draw, shapes, fan_in), net.data(draw, g, variant, regime, test))
    return draw_case()


# ---- fully connected: TwoLayerNet (both assignments) and FullyConnectedNet ---------------------

# (N, D, hidden dims, C, reg): D, the hidden dims and C distinct; N >= 2 (batch statistics). reg is
# static for JAX (one compile per value), so it is tied to a shape, and dyadic (float32-exact).
TWO_LAYER = ((2, 3, (4,), 5, 0.25), (4, 5, (3,), 2, 0.125), (3, 4, (6,), 3, 0.0))
FULLY_CONNECTED = ((2, 3, (4, 5), 2, 0.25), (4, 5, (3, 6), 4, 0.125), (3, 2, (5, 4, 3), 6, 0.0))


def _fc_layout(g, variant):
    _, d, hidden, c, _ = g
    dims = (d, *hidden, c)
    out = {}
    for layer in range(1, len(dims)):
        out[f"W{layer}"] = (dims[layer - 1], dims[layer])
        out[f"b{layer}"] = (dims[layer],)
        if variant in ("batchnorm", "layernorm") and layer < len(dims) - 1:
            out[f"gamma{layer}"] = out[f"beta{layer}"] = (dims[layer],)
    return out


def _fc_data(draw, g, variant, regime, test):
    n, d, hidden, c, reg = g
    p = {"X": draw(float_arrays((n, d), regime)), "layers": len(hidden) + 1,
         "normalization": variant if variant in ("batchnorm", "layernorm") else None, "eps": EPS}
    if test:
        if variant == "batchnorm":  # test mode normalises with the running statistics: ours
            rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
            for layer, h in enumerate(hidden, 1):
                p[f"running_mean{layer}"] = rng.standard_normal(h) * 0.5
                p[f"running_var{layer}"] = rng.uniform(0.5, 2.0, h)
        return p
    return {**p, "y": draw(labels(n, c)), "reg": reg}


def _fc_role(name):
    kind, layer = name.rstrip("0123456789"), name[len(name.rstrip("0123456789")):]
    what = {"W": "weight of affine layer", "b": "bias of affine layer", "gamma": "scale of normalisation layer",
            "beta": "shift of normalisation layer"}.get(kind)
    return f"the {what} {layer}" if what else name


def _relu_reach(case, tol, weights):
    """How far a perturbation of one param array by the finite differences' step can move a hidden
    pre-activation: the step times the data's magnitude, amplified by every layer on the way."""
    x = np.asarray(case.params.get("X", 1.0), np.float64)
    amp = max(1.0, float(np.abs(x).max(initial=0.0)))
    for w in weights:
        amp *= np.sqrt(np.prod(w.shape[1:]) if w.ndim == 4 else w.shape[0]) * max(1.0, float(np.abs(w).max()))
    return kink_tol(case, tol) * amp


def _fc_kinks(case, tol):
    a = {k: v.astype(np.float64) for k, v in case.arrays.items()}
    p = case.params
    h = np.asarray(p["X"], np.float64)
    near, weights, amp_norm = [], [], 1.0
    for layer in range(1, p["layers"]):
        weights.append(a[f"W{layer}"])
        z = R.affine_forward(h, a[f"W{layer}"], a[f"b{layer}"])[0]
        if p.get("normalization") in ("batchnorm", "layernorm"):
            axis = 0 if p["normalization"] == "batchnorm" else 1
            amp_norm *= float(np.abs(a[f"gamma{layer}"]).max()) / float(np.sqrt(z.var(axis=axis) + EPS).min())
            z = getattr(R, f"{p['normalization']}_forward")(z, a[f"gamma{layer}"], a[f"beta{layer}"], eps=EPS)[0]
        near.append(z)
        h = np.maximum(z, 0) * np.asarray(p.get(f"mask{layer}", 1.0), np.float64)
    reach = _relu_reach(case, tol, weights) * max(1.0, amp_norm)
    n = sum(int((np.abs(z) <= reach).sum()) for z in near)
    return f"{n} hidden pre-activation(s) at the ReLU kink 0" if n else None


def _normalisation_condition(case) -> float:
    """max γ/σ over the normalisation layers (1 without): the backward of x̂ = (z - μ)/σ multiplies the
    upstream gradient by γ/σ before terms that cancel exactly (the gradient of the bias feeding a batch
    norm is 0: batch norm ignores a shift), so the rounding of everything below the layer grows by γ/σ
    against the inputs' scale the policy assumes. Measured: db2 = 1.6e-13 from torch (true 0) with
    σ = 0.007, γ = 1.3 in a batch of 2, where the policy allowed 1.3e-13."""
    p = case.params
    if p.get("normalization") not in ("batchnorm", "layernorm"):
        return 1.0
    a = {k: v.astype(np.float64) for k, v in case.arrays.items()}
    h, worst = np.asarray(p["X"], np.float64), 1.0
    axis = 0 if p["normalization"] == "batchnorm" else 1
    for layer in range(1, p["layers"]):
        z = h @ a[f"W{layer}"] + a[f"b{layer}"]
        sigma = np.sqrt(z.var(axis=axis) + EPS)
        worst = max(worst, float(np.abs(a[f"gamma{layer}"]).max() / sigma.min()))
        zhat = (z - z.mean(axis=axis, keepdims=True)) / np.sqrt(z.var(axis=axis, keepdims=True) + EPS)
        h = np.maximum(zhat * a[f"gamma{layer}"] + a[f"beta{layer}"], 0) * np.asarray(p.get(f"mask{layer}", 1.0))
    return worst


def _fc_net(geometries):
    return Network("fc_net", geometries, _fc_layout, _fc_data, _fc_role, _fc_kinks,
                   penalised=lambda name: name.startswith("W"),
                   tolerance=Tolerance(_normalisation_condition, "γ/σ of the normalisation layers: their backward "
                                       "amplifies the rounding of gradients that cancel exactly (a bias feeding "
                                       "batch norm)"))


TWO_LAYER_NET = _fc_net(TWO_LAYER)
FULLY_CONNECTED_NET = _fc_net(FULLY_CONNECTED)


# ---- ThreeLayerConvNet: conv - relu - 2x2 max pool - affine - relu - affine - softmax ----------

# (N, C, H, W, filters, filter size, hidden, classes, reg): H != W, both even (the pool halves them)
CONV = ((1, 1, 2, 4, 2, 3, 3, 2, 0.125), (2, 2, 4, 6, 3, 3, 5, 4, 0.25), (3, 3, 6, 4, 2, 5, 4, 3, 0.0))


def _conv_layout(g, variant):
    _, c, h, w, f, fs, hidden, classes, _ = g
    return {"W1": (f, c, fs, fs), "b1": (f,), "W2": (f * (h // 2) * (w // 2), hidden), "b2": (hidden,),
            "W3": (hidden, classes), "b3": (classes,)}


def _conv_data(draw, g, variant, regime, test):
    n, c, h, w, _, fs, _, classes, reg = g
    p = {"X": draw(float_arrays((n, c, h, w), regime)), "pad": (fs - 1) // 2}
    return p if test else {**p, "y": draw(labels(n, classes)), "reg": reg}


def _conv_role(name):
    return {"W1": "the conv layer's filters", "b1": "the conv layer's bias", "W2": "the weight of the hidden affine layer",
            "b2": "the bias of the hidden affine layer", "W3": "the weight of the output affine layer",
            "b3": "the bias of the output affine layer"}.get(name, name)


def _conv_kinks(case, tol):
    a = {k: v.astype(np.float64) for k, v in case.arrays.items()}
    x = np.asarray(case.params["X"], np.float64)
    z1 = R.conv2d_forward(x, a["W1"], a["b1"], stride=1, pad=case.params["pad"])[0]
    reach = _relu_reach(case, tol, [a["W1"], a["W2"]])
    r1 = np.maximum(z1, 0)
    n_, f, h, w = r1.shape
    windows = np.sort(r1[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n_, f, h // 2, 2, w // 2, 2)
                      .transpose(0, 1, 2, 4, 3, 5).reshape(n_, f, h // 2, w // 2, 4), axis=-1)
    ties = int(((windows[..., -1] > reach) & (windows[..., -1] - windows[..., -2] <= reach)).sum())
    pooled = windows[..., -1].reshape(n_, -1)
    z2 = pooled @ a["W2"] + a["b2"]
    n = int((np.abs(z1) <= reach).sum()) + int((np.abs(z2) <= reach).sum())
    why = [f"{n} hidden pre-activation(s) at the ReLU kink 0"] if n else []
    why += [f"{ties} pooling window(s) with a near tie"] if ties else []
    return "; ".join(why) or None


CONV_NET = Network("conv_net", CONV, _conv_layout, _conv_data, _conv_role, _conv_kinks,
                   penalised=lambda name: name.startswith("W"))


# ---- CaptioningRNN: h0 from the image features, an RNN or LSTM over the words, temporal softmax ---

# (N, T, D, wordvec dim, H, V): captions have T + 1 words, V counts <NULL>, <START> and <END>
CAPTIONING = ((1, 1, 2, 3, 4, 5), (2, 3, 4, 3, 5, 7), (3, 2, 3, 5, 2, 6))


def _captioning_layout(g, cell):
    _, _, d, wd, h, v = g
    k = 4 if cell == "lstm" else 1
    return {"W_proj": (d, h), "b_proj": (h,), "W_embed": (v, wd), "Wx": (wd, k * h), "Wh": (h, k * h),
            "b": (k * h,), "W_vocab": (h, v), "b_vocab": (v,)}


def _captioning_data(draw, g, cell, regime, test):
    n, t, d, _, _, v = g
    from hypothesis.extra import numpy as hnp

    captions = draw(hnp.arrays(np.int64, (n, t + 1), elements=st.integers(0, v - 1)))  # <NULL>s included
    return {"features": draw(float_arrays((n, d), regime)), "captions": captions, "null": NULL, "cell": cell}


def _captioning_role(name):
    return {"W_proj": "the projection of the image features to h0", "b_proj": "the bias of that projection",
            "W_embed": "the word embedding", "Wx": "the recurrent layer's input weight",
            "Wh": "the recurrent layer's hidden-to-hidden weight", "b": "the recurrent layer's bias",
            "W_vocab": "the weight of the output (temporal affine) layer",
            "b_vocab": "the bias of the output (temporal affine) layer"}.get(name, name)


CAPTIONING_RNN = Network("captioning_rnn", CAPTIONING, _captioning_layout, _captioning_data, _captioning_role)


def vocabulary(v: int) -> dict[str, int]:
    """A word_to_idx of v words, the three special tokens first (<NULL> = 0)."""
    words = ["<NULL>", "<START>", "<END>"] + [f"w{i}" for i in range(max(v - 3, 0))]
    return {w: i for i, w in enumerate(words[:v])}
