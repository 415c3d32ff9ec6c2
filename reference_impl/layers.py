"""Affine layers, elementwise activations and (log-)softmax. Forward and backward side by side."""
import numpy as np

from ._common import _log_softmax, _sigmoid, _softmax

__all__ = [
    "affine_forward", "affine_backward",
    "linear_column_forward", "linear_column_backward",
    "relu_forward", "relu_backward",
    "sigmoid_forward", "sigmoid_backward",
    "tanh_forward", "tanh_backward",
    "softmax_forward", "softmax_backward",
    "log_softmax_forward", "log_softmax_backward",
]


def affine_forward(x, w, b):
    """x: (N, d1, ..., dk), w: (D, M) with D = d1*...*dk, b: (M,) -> out (N, M).
    A leading axis on all three (x: (K, N, ...), w: (K, D, M), b: (K, M)) is K layers at once."""
    n = x.shape[w.ndim - 2]  # N, after any leading axes
    out = x.reshape(*x.shape[:w.ndim - 2], n, -1) @ w + b[..., None, :]
    return out, (x, w)


def affine_backward(dout, cache):
    # out = X w + b with X = x flattened:  dX = dout w^T,  dw = X^T dout,  db = Σ_n dout
    x, w = cache
    dx = (dout @ w.mT).reshape(x.shape)
    dw = x.reshape(*dout.shape[:-1], -1).mT @ dout
    db = dout.sum(axis=-2)
    return dx, dw, db


def linear_column_forward(w, x, b):
    """Column layout of the notes (seed 002 §8): w: (M, D), x: (D, N), b: (M, 1) -> w @ x + b, (M, N)."""
    return w @ x + b, (w, x)


def linear_column_backward(dout, cache):
    # Y = W X + B:  dW = dY X^T,  dX = W^T dY,  dB = dY summed over the columns (samples)
    w, x = cache
    return dout @ x.T, w.T @ dout, dout.sum(axis=1, keepdims=True)


def relu_forward(x):
    """x: any shape -> max(x, 0)."""
    return np.maximum(x, 0), x


def relu_backward(dout, cache):
    # d/dx max(x, 0) = [x > 0]; at x == 0 we take 0 (the min-norm subgradient, as torch and jax.nn.relu)
    x = cache
    return dout * (x > 0)


def sigmoid_forward(x):
    """x: any shape -> 1 / (1 + e^-x), stable for large |x|."""
    out = _sigmoid(x)
    return out, (x, out)


def sigmoid_backward(dout, cache):
    # σ'(x) = σ(x)(1 - σ(x)) = σ(x)σ(-x); the second form avoids the cancellation 1 - σ(x) -> 0,
    # which in float32 makes σ'(x) exactly 0 from x ≈ 17 on although it is ~4e-8 there
    x, out = cache
    return dout * out * _sigmoid(-x)


def tanh_forward(x):
    """x: any shape -> tanh(x)."""
    out = np.tanh(x)
    return out, out


def tanh_backward(dout, cache):
    # tanh'(x) = 1 - tanh(x)^2
    out = cache
    return dout * (1 - out * out)


def softmax_forward(x):
    """x: (N, C) -> softmax over axis 1, (N, C)."""
    s = _softmax(x, axis=1)
    return s, s


def softmax_backward(dout, cache):
    # Jacobian-vector product without forming the (C, C) Jacobian diag(s) - s s^T:
    # dx = s ⊙ (dout - <dout, s>) row by row
    s = cache
    return s * (dout - (dout * s).sum(axis=1, keepdims=True))


def log_softmax_forward(x):
    """x: (N, C) -> log softmax over axis 1, (N, C)."""
    logp = _log_softmax(x, axis=1)
    return logp, logp


def log_softmax_backward(dout, cache):
    # d log s_j / dx_k = [j == k] - s_k:  dx = dout - s · Σ_j dout_j
    logp = cache
    return dout - np.exp(logp) * dout.sum(axis=1, keepdims=True)
