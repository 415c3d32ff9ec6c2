"""Linear classifiers of cs231n assignment 1: scores s = X W, a data loss over s, and L2
regularisation of W. W is the only differentiable input; X (N, D) is data.

The regularisation term is `reg_scale * reg * Σ W²`: cs231n has used `reg * Σ W²` (gradient
`2 reg W`, reg_scale = 1) and `0.5 * reg * Σ W²` (gradient `reg W`, reg_scale = 0.5) in different
years. Both are right; a gradient is right only for the loss it comes with.
"""
import numpy as np

from ._common import _log_softmax, _scalar

__all__ = [
    "linear_svm_forward", "linear_svm_backward",
    "linear_softmax_forward", "linear_softmax_backward",
]


def _reg_term(W, reg, reg_scale):
    r = _scalar(reg_scale, W.dtype) * _scalar(reg, W.dtype)
    return r, r * (W * W).sum()


def linear_svm_forward(W, *, X, y, reg, reg_scale=1.0):
    """W: (D, C), X: (N, D), y: (N,) int -> (1/N) Σ_n Σ_{j≠y_n} max(0, s_nj - s_{n,y_n} + 1)
    + reg_scale·reg·Σ W², s = X W; 0-d."""
    X = np.asarray(X, dtype=W.dtype)
    n = X.shape[0]
    rows = np.arange(n)
    scores = X @ W
    margins = scores - scores[rows, y][:, None] + 1
    margins[rows, y] = 0  # the j = y_n term is not in the sum
    r, penalty = _reg_term(W, reg, reg_scale)
    loss = np.maximum(margins, 0).sum() / n + penalty
    return np.asarray(loss, dtype=W.dtype), (X, W, margins, y, r)


def linear_svm_backward(dout, cache):
    # dscores: +1 at each active margin (> 0; 0 at the hinge itself, a valid subgradient), minus their
    # count at the label, over N;  dW = X^T dscores + 2 reg_scale reg W
    X, W, margins, y, r = cache
    n = X.shape[0]
    active = (margins > 0).astype(W.dtype)
    active[np.arange(n), y] = -active.sum(axis=1)
    dscores = active * (dout / n)
    return X.T @ dscores + 2 * r * dout * W


def linear_softmax_forward(W, *, X, y, reg, reg_scale=1.0):
    """W: (D, C), X: (N, D), y: (N,) int -> mean_n -log softmax(X W)[n, y_n] + reg_scale·reg·Σ W², 0-d."""
    X = np.asarray(X, dtype=W.dtype)
    n = X.shape[0]
    logp = _log_softmax(X @ W, axis=1)
    r, penalty = _reg_term(W, reg, reg_scale)
    loss = -logp[np.arange(n), y].mean() + penalty
    return np.asarray(loss, dtype=W.dtype), (X, W, logp, y, r)


def linear_softmax_backward(dout, cache):
    # dscores = (softmax(s) - onehot(y)) / N;  dW = X^T dscores + 2 reg_scale reg W
    X, W, logp, y, r = cache
    n = X.shape[0]
    dscores = np.exp(logp)
    dscores[np.arange(n), y] -= 1
    dscores *= dout / n
    return X.T @ dscores + 2 * r * dout * W
