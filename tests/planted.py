"""Wrong derivations planted on purpose: the harness must flag every one of them, every time.

Each is a copy of a reference with one realistic mistake. `PLANTED` maps a short name to
(catalogue op, forward, backward, what is wrong).
"""
import numpy as np

import reference_impl as ref


def affine_backward_sign(dout, cache):
    dx, dw, db = ref.affine_backward(dout, cache)
    return dx, -dw, db  # wrong sign


def affine_backward_db_mean(dout, cache):
    dx, dw, _ = ref.affine_backward(dout, cache)
    return dx, dw, dout.mean(axis=0)  # db averaged instead of summed


def affine_backward_transposed_weight(dout, cache):
    x, w = cache
    dx = (dout @ w.T).reshape(x.shape)
    dw = dout.T @ x.reshape(x.shape[0], -1)  # transposed: (M, D) instead of (D, M)
    return dx, dw, dout.sum(axis=0)


def softmax_cross_entropy_backward_no_mean(dout, cache):
    logp, y = cache
    dx = np.exp(logp)
    dx[np.arange(logp.shape[0]), y] -= 1
    return dx * dout  # missing 1/N


def naive_softmax_cross_entropy_forward(x, *, y):
    e = np.exp(x)  # no max shift: overflows for large logits
    p = e / e.sum(axis=1, keepdims=True)
    loss = -np.log(p[np.arange(x.shape[0]), y]).mean()
    return np.asarray(loss, dtype=x.dtype), (p, y)


def naive_softmax_cross_entropy_backward(dout, cache):
    p, y = cache
    dx = p.copy()
    dx[np.arange(p.shape[0]), y] -= 1
    return dx * (dout / p.shape[0])


def conv2d_backward_overwrites_overlaps(dout, cache):
    x_shape, xp_shape, win, w, stride, pad = cache
    dw = np.einsum("nfij,ncijuv->fcuv", dout, win)
    db = dout.sum(axis=(0, 2, 3))
    dwin = np.einsum("nfij,fcuv->ncijuv", dout, w)
    dxp = np.zeros(xp_shape, dtype=dout.dtype)
    _, _, ho, wo, hh, ww = dwin.shape
    for u in range(hh):
        for v in range(ww):
            rows = slice(u, u + stride * (ho - 1) + 1, stride)
            cols = slice(v, v + stride * (wo - 1) + 1, stride)
            dxp[:, :, rows, cols] = dwin[..., u, v]  # `=` for `+=`: overlapping windows keep one contribution
    return dxp[:, :, pad:pad + x_shape[2], pad:pad + x_shape[3]].copy(), dw, db


def relu_backward_mutates_dout(dout, cache):
    x = cache
    dx = dout
    dx[x <= 0] = 0  # the classic: modifies the caller's upstream gradient
    return dx


PLANTED = {
    "affine-wrong-sign": ("affine", ref.affine_forward, affine_backward_sign, "dw has the wrong sign"),
    "affine-db-mean": ("affine", ref.affine_forward, affine_backward_db_mean, "db averaged instead of summed"),
    "affine-transposed-weight": ("affine", ref.affine_forward, affine_backward_transposed_weight,
                                 "dw transposed"),
    "softmax-ce-missing-1/N": ("softmax_cross_entropy", ref.softmax_cross_entropy_forward,
                               softmax_cross_entropy_backward_no_mean, "missing 1/N"),
    "softmax-ce-no-max-shift": ("softmax_cross_entropy", naive_softmax_cross_entropy_forward,
                                naive_softmax_cross_entropy_backward, "softmax without the max shift"),
    "relu-mutates-dout": ("relu", ref.relu_forward, relu_backward_mutates_dout, "dout modified in place"),
    "conv-overlaps-overwrite": ("conv2d", ref.conv2d_forward, conv2d_backward_overwrites_overlaps,
                                "overlapping windows overwrite dx instead of adding up"),
}


# --- one realistic mistake per op family, planted on top of the correct reference ----------------

def _planted(op, mutate):
    """The reference of `op` with its gradients passed through `mutate(grads, douts, arrays, params, out)`."""
    fwd, bwd = getattr(ref, f"{op}_forward"), getattr(ref, f"{op}_backward")

    def forward(*arrays, **params):
        out, cache = fwd(*arrays, **params)
        return out, (cache, arrays, params, out)

    def backward(*args):
        *douts, (cache, arrays, params, out) = args
        grads = bwd(*douts, cache)
        return mutate(grads if isinstance(grads, tuple) else (grads,), douts, arrays, params, out)

    backward.__name__ = f"{op}_backward_planted"
    return op, forward, backward


def _one(f):
    return lambda g, d, a, p, o: f(g, d, a, p, o)[0] if len(g) == 1 else f(g, d, a, p, o)


def _embedding_last_write_wins(g, d, a, p, o):
    dw = np.zeros_like(a[0])
    dw[p["idx"]] = d[0]  # `dW[idx] = dout` (or `+=`): repeated indices keep only one contribution
    return dw


FAMILY_BUGS = {
    "gates: multiply gate gradients swapped": _planted("multiply_gate", lambda g, d, a, p, o: (g[1], g[0])),
    "gates: max gate credits every tied input": _planted(
        "max_gate", lambda g, d, a, p, o: (d[0] * (a[0] >= a[1]), d[0] * (a[1] >= a[0]))),
    "layers: column-layout bias summed over the wrong axis": _planted(
        "linear_column", lambda g, d, a, p, o: (g[0], g[1], d[0].sum(axis=0, keepdims=True).T)),
    "activations: sigmoid' written as s": _planted("sigmoid", _one(lambda g, d, a, p, o: (d[0] * o,))),
    "activations: tanh' written as 1 - h": _planted("tanh", _one(lambda g, d, a, p, o: (d[0] * (1 - o),))),
    "softmax: only the Jacobian's diagonal": _planted("softmax", _one(lambda g, d, a, p, o: (d[0] * o * (1 - o),))),
    "losses: hinge counts the correct class": _planted(
        "svm_hinge", _one(lambda g, d, a, p, o: (g[0] + np.eye(a[0].shape[1])[p["y"]] * (d[0] / a[0].shape[0]),))),
    "regularization: the 2 of d(reg w²) dropped": _planted("l2_regularization", _one(lambda g, d, a, p, o: (g[0] / 2,))),
    "dropout: backward forgets the 1/p": _planted(
        "dropout", _one(lambda g, d, a, p, o: (g[0] * p["p"] if p["mode"] == "train" else g[0],))),
    "conv: db averaged over the batch": _planted("conv2d", lambda g, d, a, p, o: (g[0], g[1], g[2] / a[0].shape[0])),
    "pooling: average pool without 1/area": _planted(
        "avg_pool2d", _one(lambda g, d, a, p, o: (g[0] * p["pool_height"] * p["pool_width"],))),
    "rnn: dprev_h never computed (seed 000's rnn_step_backward)": _planted(
        "rnn_step", lambda g, d, a, p, o: (g[0], np.zeros_like(g[1]), *g[2:])),
    "lstm: the cell state's path to prev_c dropped": _planted(
        "lstm_step", lambda g, d, a, p, o: (g[0], g[1], np.zeros_like(g[2]), *g[3:])),
    "normalization: dgamma without x_hat": _planted("batchnorm", lambda g, d, a, p, o: (g[0], g[2], g[2])),
    "embedding: repeated indices overwrite": _planted("embedding", _one(lambda g, d, a, p, o: (_embedding_last_write_wins(g, d, a, p, o),))),
    "temporal: bias averaged over time": _planted(
        "temporal_affine", lambda g, d, a, p, o: (g[0], g[1], g[2] / a[0].shape[1])),
    "networks: reg·W instead of 2·reg·W": _planted(
        "two_layer_net", lambda g, d, a, p, o: (g[0], g[1] - d[0] * p["reg"] * a[1], g[2],
                                                g[3] - d[0] * p["reg"] * a[3], g[4])),
}
for _what, (_op, _f, _b) in FAMILY_BUGS.items():
    PLANTED[_what] = (_op, _f, _b, _what)


# --- height/width swaps in naive (loop) convolution and pooling, written the way students write them --
# Each mutant swaps height and width at ONE place of an otherwise correct implementation: a size
# formula (H' from W, or from the kernel's width; W' likewise), the loop bounds, the window's extent,
# the backward's crop of the padding, max-pool's argmax unravelled with (width, height). Geometries
# where the floor division gives the same size either way hide the size-formula swaps; the catalogue's
# conv and pooling geometries are chosen so that none can hide (properties/catalogue/conv.py).

_BOTH, _ALL = ("forward", "backward"), ("conv2d", "max_pool2d", "avg_pool2d")
SWAPS = {  # site -> (the functions it can be in, the ops that have it)
    "H' from W": (_BOTH, _ALL), "H' from the kernel width": (_BOTH, _ALL),
    "W' from H": (_BOTH, _ALL), "W' from the kernel height": (_BOTH, _ALL),
    "loops over (W', H')": (_BOTH, _ALL), "window rows span the kernel width": (_BOTH, _ALL),
    "window columns span the kernel height": (_BOTH, _ALL),
    "padding cropped as (W, H)": (("backward",), ("conv2d",)),
    "argmax unravelled as (width, height)": (("backward",), ("max_pool2d",)),
}


def _sizes(h, w, kh, kw, stride, pad, swap):
    """cs231n's H' = 1 + (H + 2 pad - HH) // stride, W' likewise, with one swap."""
    rows = 1 + ((w if swap == "H' from W" else h) + 2 * pad - (kw if swap == "H' from the kernel width" else kh)) // stride
    cols = 1 + ((h if swap == "W' from H" else w) + 2 * pad - (kh if swap == "W' from the kernel height" else kw)) // stride
    return rows, cols


def _loops(rows, cols, swap):
    return (cols, rows) if swap == "loops over (W', H')" else (rows, cols)


def _span(kh, kw, swap):
    return (kw if swap == "window rows span the kernel width" else kh,
            kh if swap == "window columns span the kernel height" else kw)


def naive_conv(swap=None, where="forward"):
    """conv_forward_naive / conv_backward_naive as a student writes them (loops over output positions,
    np.zeros allocations), with `swap` in the `where` function; (forward, backward)."""
    fs, bs = (swap, None) if where == "forward" else (None, swap)

    def forward(x, w, b, *, stride, pad):
        n, c, h, wd = x.shape
        f, _, hh, ww = w.shape
        h_out, w_out = _sizes(h, wd, hh, ww, stride, pad, fs)
        xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        out = np.zeros((n, f, h_out, w_out), dtype=x.dtype)
        rows, cols = _loops(h_out, w_out, fs)
        sh, sw = _span(hh, ww, fs)
        for i in range(rows):
            for j in range(cols):
                window = xp[:, :, i * stride:i * stride + sh, j * stride:j * stride + sw]
                out[:, :, i, j] = np.tensordot(window, w, axes=([1, 2, 3], [1, 2, 3])) + b
        return out, (x, w, stride, pad)

    def backward(dout, cache):
        x, w, stride, pad = cache
        _, _, h, wd = x.shape
        _, _, hh, ww = w.shape
        h_out, w_out = _sizes(h, wd, hh, ww, stride, pad, bs)  # recomputed from the shapes, not read off dout
        xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        dxp, dw = np.zeros_like(xp), np.zeros_like(w)
        rows, cols = _loops(h_out, w_out, bs)
        sh, sw = _span(hh, ww, bs)
        for i in range(rows):
            for j in range(cols):
                window = xp[:, :, i * stride:i * stride + sh, j * stride:j * stride + sw]
                dw += np.tensordot(dout[:, :, i, j], window, axes=([0], [0]))
                dxp[:, :, i * stride:i * stride + sh, j * stride:j * stride + sw] += \
                    np.tensordot(dout[:, :, i, j], w, axes=([1], [0]))
        crop_h, crop_w = (wd, h) if bs == "padding cropped as (W, H)" else (h, wd)
        return dxp[:, :, pad:pad + crop_h, pad:pad + crop_w], dw, dout.sum(axis=(0, 2, 3))

    forward.__name__, backward.__name__ = "conv_forward_naive", "conv_backward_naive"
    return forward, backward


def naive_pool(kind, swap=None, where="forward"):
    """max_pool_forward_naive / its backward (kind "max") or the average-pooling pair (kind "avg")."""
    fs, bs = (swap, None) if where == "forward" else (None, swap)

    def forward(x, *, pool_height, pool_width, stride):
        n, c, h, w = x.shape
        h_out, w_out = _sizes(h, w, pool_height, pool_width, stride, 0, fs)
        out = np.zeros((n, c, h_out, w_out), dtype=x.dtype)
        rows, cols = _loops(h_out, w_out, fs)
        sh, sw = _span(pool_height, pool_width, fs)
        for i in range(rows):
            for j in range(cols):
                window = x[:, :, i * stride:i * stride + sh, j * stride:j * stride + sw]
                out[:, :, i, j] = window.max(axis=(2, 3)) if kind == "max" else window.mean(axis=(2, 3))
        return out, (x, pool_height, pool_width, stride)

    def backward(dout, cache):
        x, ph, pw, stride = cache
        n, c, h, w = x.shape
        h_out, w_out = _sizes(h, w, ph, pw, stride, 0, bs)
        dx = np.zeros_like(x)
        rows, cols = _loops(h_out, w_out, bs)
        sh, sw = _span(ph, pw, bs)
        for i in range(rows):
            for j in range(cols):
                hs, ws = i * stride, j * stride
                if kind == "avg":
                    dx[:, :, hs:hs + sh, ws:ws + sw] += dout[:, :, i, j][:, :, None, None] / (ph * pw)
                    continue
                for a in range(n):
                    for ch in range(c):
                        window = x[a, ch, hs:hs + sh, ws:ws + sw]
                        shape = (pw, ph) if bs == "argmax unravelled as (width, height)" else window.shape
                        u, v = np.unravel_index(np.argmax(window), shape)
                        dx[a, ch, hs + u, ws + v] += dout[a, ch, i, j]
        return dx

    forward.__name__, backward.__name__ = f"{kind}_pool_forward_naive", f"{kind}_pool_backward_naive"
    return forward, backward


NAIVE = {"conv2d": naive_conv, "max_pool2d": lambda *a, **k: naive_pool("max", *a, **k),
         "avg_pool2d": lambda *a, **k: naive_pool("avg", *a, **k)}

# "op function: site" -> (op, forward, backward, what): every swap in every function that can have it
HW_SWAPS = {f"{op} {where}: {site}": (op, *NAIVE[op](site, where), f"{site} in the naive {op} {where}")
            for site, (functions, ops) in SWAPS.items() for op in ops for where in functions}
