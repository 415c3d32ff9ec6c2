"""Whole small networks as one op each, written out as the notes derive them."""
import numpy as np

from ._common import _log_softmax, _scalar, _sigmoid

__all__ = [
    "mlp_sigmoid_mse_forward", "mlp_sigmoid_mse_backward",
    "two_layer_net_forward", "two_layer_net_backward",
]


def mlp_sigmoid_mse_forward(x, w1, b1, w2, b2, *, y):
    """Sigmoid MLP with squared error (seed 000 §DNN, rows as samples).

    x: (N, D), w1: (D, H), b1: (H,), w2: (H, K), b2: (K,), y: (N, K) float
    a1 = σ(x w1 + b1), a2 = σ(a1 w2 + b2), loss = ½ Σ (a2 - y)² (summed over rows too), 0-d.
    """
    a1 = _sigmoid(x @ w1 + b1)
    a2 = _sigmoid(a1 @ w2 + b2)
    diff = a2 - np.asarray(y, dtype=a2.dtype)
    loss = (diff * diff).sum() / 2
    return np.asarray(loss, dtype=a2.dtype), (x, w1, w2, a1, a2, diff)


def mlp_sigmoid_mse_backward(dout, cache):
    # δ2 = (a2 - y) ⊙ σ'(z2),  dW2 = a1^T δ2,  db2 = Σ_n δ2
    # δ1 = (δ2 W2^T) ⊙ σ'(z1), dW1 = x^T δ1,   db1 = Σ_n δ1,  dx = δ1 W1^T;   σ'(z) = a(1 - a)
    x, w1, w2, a1, a2, diff = cache
    d2 = (diff * dout) * a2 * (1 - a2)
    d1 = (d2 @ w2.T) * a1 * (1 - a1)
    return d1 @ w1.T, x.T @ d1, d1.sum(axis=0), a1.T @ d2, d2.sum(axis=0)


def two_layer_net_forward(x, w1, b1, w2, b2, *, y, reg):
    """Two-layer ReLU net with softmax loss and L2 regularisation (seed 004, cs231n assignment 1).

    x: (N, D), w1: (D, H), b1: (H,), w2: (H, C), b2: (C,), y: (N,) int, reg: float
    loss = mean_n CE(relu(x w1 + b1) w2 + b2, y) + reg (Σ w1² + Σ w2²), 0-d.
    """
    n = x.shape[0]
    reg = _scalar(reg, x.dtype)
    h = np.maximum(x @ w1 + b1, 0)
    scores = h @ w2 + b2
    logp = _log_softmax(scores, axis=1)
    loss = -logp[np.arange(n), y].mean() + reg * ((w1 * w1).sum() + (w2 * w2).sum())
    return np.asarray(loss, dtype=scores.dtype), (x, w1, w2, h, logp, y, reg)


def two_layer_net_backward(dout, cache):
    # dscores = (softmax - onehot(y)) / N;  dW2 = h^T dscores + 2 reg W2;  db2 = Σ_n dscores
    # dh = dscores W2^T, through the ReLU (0 at 0: h == 0 there);  dW1 = x^T dz1 + 2 reg W1;  dx = dz1 W1^T
    x, w1, w2, h, logp, y, reg = cache
    n = x.shape[0]
    dscores = np.exp(logp)
    dscores[np.arange(n), y] -= 1
    dscores *= dout / n
    dz1 = (dscores @ w2.T) * (h > 0)
    dreg = 2 * reg * dout
    return (dz1 @ w1.T, x.T @ dz1 + dreg * w1, dz1.sum(axis=0),
            h.T @ dscores + dreg * w2, dscores.sum(axis=0))
