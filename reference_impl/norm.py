"""Batch and layer normalisation (train mode), with the compact backward formula."""
import numpy as np

from ._common import _scalar

__all__ = [
    "batchnorm_forward", "batchnorm_backward",
    "layernorm_forward", "layernorm_backward",
]


def _normalize(x, gamma, beta, eps, axis):
    # two-pass statistics (mean first, then the biased variance of the centred values)
    mu = x.mean(axis=axis, keepdims=True)
    xc = x - mu
    inv_std = 1 / np.sqrt((xc * xc).mean(axis=axis, keepdims=True) + _scalar(eps, x.dtype))
    xhat = xc * inv_std
    return gamma * xhat + beta, (xhat, inv_std, gamma, axis)


def _normalize_backward(dout, cache):
    # with m values normalised together and dxhat = dout ⊙ gamma:
    #   dx = (inv_std / m) · (m·dxhat - Σ dxhat - xhat ⊙ Σ(dxhat ⊙ xhat))   (sums over the normalised axis)
    #   dgamma = Σ_n dout ⊙ xhat,  dbeta = Σ_n dout                          (sums over the batch axis 0)
    xhat, inv_std, gamma, axis = cache
    m = xhat.shape[axis]
    dxhat = dout * gamma
    dx = (inv_std / m) * (m * dxhat - dxhat.sum(axis=axis, keepdims=True)
                          - xhat * (dxhat * xhat).sum(axis=axis, keepdims=True))
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)


def batchnorm_forward(x, gamma, beta, *, eps):
    """x: (N, D), gamma, beta: (D,) -> (N, D), each column normalised by its batch mean and biased
    variance (train mode), then gamma * xhat + beta."""
    return _normalize(x, gamma, beta, eps, axis=0)


def batchnorm_backward(dout, cache):
    return _normalize_backward(dout, cache)


def layernorm_forward(x, gamma, beta, *, eps):
    """x: (N, D), gamma, beta: (D,) -> (N, D), each row normalised by its own mean and biased
    variance, then gamma * xhat + beta."""
    return _normalize(x, gamma, beta, eps, axis=1)


def layernorm_backward(dout, cache):
    return _normalize_backward(dout, cache)
