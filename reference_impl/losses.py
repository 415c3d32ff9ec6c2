"""Losses: softmax cross-entropy, MSE, multiclass SVM hinge. Each returns a 0-d array of x's dtype."""
import numpy as np

from ._common import _log_softmax

__all__ = [
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
    "mse_forward", "mse_backward",
    "svm_hinge_forward", "svm_hinge_backward",
]


def softmax_cross_entropy_forward(x, *, y):
    """x: (N, C) scores, y: (N,) int labels -> mean over N of -log softmax(x)[n, y_n] (0-d).
    x: (K, N, C) gives the K losses, (K,)."""
    n = x.shape[-2]
    logp = _log_softmax(x, axis=-1)
    loss = -logp[..., np.arange(n), y].mean(axis=-1)
    return np.asarray(loss, dtype=x.dtype), (logp, y)


def softmax_cross_entropy_backward(dout, cache):
    # dL/dx = (softmax(x) - onehot(y)) / N, scaled by the upstream scalar
    logp, y = cache
    n = logp.shape[-2]
    dx = np.exp(logp)
    dx[..., np.arange(n), y] -= 1
    scale = dout / n
    return dx * (scale[..., None, None] if np.ndim(scale) else scale)  # (K,) upstream: one per loss


def mse_forward(a, *, y):
    """a: (S) prediction, y: (S) float target -> ½ Σ (a - y)², 0-d (a sum, not a mean)."""
    diff = a - np.asarray(y, dtype=a.dtype)
    return np.asarray((diff * diff).sum() / 2, dtype=a.dtype), diff


def mse_backward(dout, cache):
    # d/da ½‖a - y‖² = a - y
    diff = cache
    return diff * dout


def svm_hinge_forward(x, *, y):
    """x: (N, C) scores, y: (N,) int labels -> (1/N) Σ_n Σ_{j≠y_n} max(0, x_nj - x_{n,y_n} + 1), 0-d."""
    n = x.shape[0]
    rows = np.arange(n)
    margins = x - x[rows, y][:, None] + 1
    margins[rows, y] = 0  # the j = y_n term is not in the sum (its margin would be exactly 1)
    loss = np.maximum(margins, 0).sum() / n
    return np.asarray(loss, dtype=x.dtype), (margins, y)


def svm_hinge_backward(dout, cache):
    # each active term (margin > 0) adds +1 at x_nj and -1 at x_{n,y_n}; all scaled by dout / N.
    # At a margin of exactly 0 the term is taken as inactive (gradient 0), the 0-at-0 choice of
    # max(0, ·) that torch's relu and clamp(min=0) make: a valid subgradient (anything in [0, 1] is).
    margins, y = cache
    n = margins.shape[0]
    rows = np.arange(n)
    active = (margins > 0).astype(margins.dtype)
    active[rows, y] = -active.sum(axis=1)
    return active * (dout / n)
