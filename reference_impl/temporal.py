"""Word embedding and the per-timestep layers of captioning RNNs (cs231n rnn_layers)."""
import numpy as np

from ._common import _log_softmax

__all__ = [
    "embedding_forward", "embedding_backward",
    "temporal_affine_forward", "temporal_affine_backward",
    "temporal_softmax_loss_forward", "temporal_softmax_loss_backward",
]


def embedding_forward(w, *, idx):
    """w: (V, D) word vectors, idx: (N, T) int, may repeat -> w[idx], (N, T, D)."""
    return w[idx], (w.shape, w.dtype, idx)


def embedding_backward(dout, cache):
    # every use of a row adds its gradient: np.add.at accumulates repeated indices,
    # where dw[idx] += dout would keep only one of them
    w_shape, dtype, idx = cache
    dw = np.zeros(w_shape, dtype=dtype)
    np.add.at(dw, idx, dout)
    return dw


def temporal_affine_forward(x, w, b):
    """x: (N, T, D), w: (D, M), b: (M,) -> x @ w + b at every step, (N, T, M)."""
    return x @ w + b, (x, w)


def temporal_affine_backward(dout, cache):
    # the affine map of every (n, t) row:  dx = dout w^T,  dw = Σ_{n,t} x^T dout,  db = Σ_{n,t} dout
    x, w = cache
    dx = dout @ w.T
    dw = x.reshape(-1, x.shape[2]).T @ dout.reshape(-1, dout.shape[2])
    return dx, dw, dout.sum(axis=(0, 1))


def temporal_softmax_loss_forward(x, *, y, mask):
    """x: (N, T, V) scores, y: (N, T) int, mask: (N, T) bool -> (1/N) Σ_{n,t} mask · CE, 0-d.

    Divides by the batch size N, not by the number of unmasked steps (cs231n).
    """
    n = x.shape[0]
    logp = _log_softmax(x, axis=2)
    picked = np.take_along_axis(logp, y[..., None], axis=2)[..., 0]
    loss = -np.where(mask, picked, 0).sum() / n  # where, not a product: a masked -inf must not give NaN
    return np.asarray(loss, dtype=x.dtype), (logp, y, np.asarray(mask, dtype=x.dtype))


def temporal_softmax_loss_backward(dout, cache):
    # dx[n, t] = mask[n, t] · (softmax(x[n, t]) - onehot(y[n, t])) / N, times the upstream scalar
    logp, y, m = cache
    n, t_len, _ = logp.shape
    dx = np.exp(logp)
    dx[np.arange(n)[:, None], np.arange(t_len), y] -= 1
    return dx * (m * (dout / n))[..., None]
