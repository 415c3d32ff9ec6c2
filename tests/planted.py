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
}
