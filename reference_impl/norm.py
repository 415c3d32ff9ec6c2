"""Batch and layer normalisation (train mode), spatial batch and group normalisation (NCHW), and
batchnorm's test mode and running statistics; the compact backward formula throughout."""
import numpy as np

from ._common import _scalar

__all__ = [
    "batchnorm_forward", "batchnorm_backward",
    "layernorm_forward", "layernorm_backward",
    "spatial_batchnorm_forward", "spatial_batchnorm_backward",
    "spatial_groupnorm_forward", "spatial_groupnorm_backward",
    "batchnorm_running_forward", "batchnorm_running_backward",
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


# ---- spatial (NCHW) normalisation, and batchnorm's running statistics -------------------------

def _standardize(x, axes, eps):
    """(x̂, 1/σ) over `axes` (kept as size-1 dims): two-pass statistics, biased variance."""
    mu = x.mean(axis=axes, keepdims=True)
    xc = x - mu
    inv_std = 1 / np.sqrt((xc * xc).mean(axis=axes, keepdims=True) + _scalar(eps, x.dtype))
    return xc * inv_std, inv_std


def _standardize_backward(dxhat, xhat, inv_std, axes):
    # the compact formula of _normalize_backward, with m the number of values standardised together
    m = int(np.prod([xhat.shape[a] for a in axes]))
    return (inv_std / m) * (m * dxhat - dxhat.sum(axis=axes, keepdims=True)
                            - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True))


def spatial_batchnorm_forward(x, gamma, beta, *, eps):
    """x: (N, C, H, W), gamma, beta: (C,) -> (N, C, H, W): each channel normalised by the mean and
    biased variance of its N·H·W values (train mode), then gamma * x̂ + beta."""
    xhat, inv_std = _standardize(x, (0, 2, 3), eps)
    g = gamma.reshape(1, -1, 1, 1)
    return g * xhat + beta.reshape(1, -1, 1, 1), (xhat, inv_std, g)


def spatial_batchnorm_backward(dout, cache):
    # dgamma[c] = Σ_{n,h,w} dout ⊙ x̂, dbeta[c] = Σ_{n,h,w} dout; dx as batchnorm over the N·H·W positions
    xhat, inv_std, g = cache
    dx = _standardize_backward(dout * g, xhat, inv_std, (0, 2, 3))
    return dx, (dout * xhat).sum(axis=(0, 2, 3)), dout.sum(axis=(0, 2, 3))


def spatial_groupnorm_forward(x, gamma, beta, *, G, eps):
    """x: (N, C, H, W), gamma, beta: (1, C, 1, 1) (the cs231n shapes), G groups of C/G consecutive
    channels -> (N, C, H, W): every (sample, group) normalised by the mean and biased variance of its
    C/G·H·W values, then gamma * x̂ + beta per channel. G = 1 is layer norm over (C, H, W), G = C
    instance norm."""
    n, c, h, w = x.shape
    if G < 1 or c % G:
        raise ValueError(f"spatial_groupnorm: G = {G} does not divide the {c} channels")
    xhat, inv_std = _standardize(x.reshape(n, G, c // G, h, w), (2, 3, 4), eps)
    xhat = xhat.reshape(x.shape)
    return gamma * xhat + beta, (xhat, inv_std, gamma, G)


def spatial_groupnorm_backward(dout, cache):
    # per (sample, group) the normalisation backward over its C/G·H·W values;
    # dgamma, dbeta: sums over N, H, W, kept (1, C, 1, 1) like gamma
    xhat, inv_std, gamma, G = cache
    n, c, h, w = xhat.shape
    grouped = (n, G, c // G, h, w)
    dx = _standardize_backward((dout * gamma).reshape(grouped), xhat.reshape(grouped), inv_std, (2, 3, 4))
    return (dx.reshape(xhat.shape), (dout * xhat).sum(axis=(0, 2, 3), keepdims=True),
            dout.sum(axis=(0, 2, 3), keepdims=True))


def batchnorm_running_forward(x, gamma, beta, *, running_mean, running_var, momentum, eps):
    """What cs231n's batchnorm_forward does with its running statistics. x: (N, D), gamma, beta,
    running_mean, running_var: (D,) -> three outputs:

    - out (N, D): test mode, gamma * (x - running_mean) / sqrt(running_var + eps) + beta;
    - the running statistics after a train-mode call on the batch x:
      momentum * running_mean + (1 - momentum) * mean(x), and the same for running_var with the
      BIASED batch variance (cs231n's convention; torch's buffers take the unbiased one, and weigh
      the old value by 1 - momentum).
    """
    m = _scalar(momentum, x.dtype)
    # the statistics are params, not inputs: in x's dtype, so a float32 op stays float32
    running_mean, running_var = np.asarray(running_mean, x.dtype), np.asarray(running_var, x.dtype)
    inv_std = 1 / np.sqrt(running_var + _scalar(eps, x.dtype))
    xhat = (x - running_mean) * inv_std
    mu = x.mean(axis=0)
    xc = x - mu
    new_mean = m * running_mean + (1 - m) * mu
    new_var = m * running_var + (1 - m) * (xc * xc).mean(axis=0)
    return (gamma * xhat + beta, new_mean, new_var), (xhat, inv_std, gamma, xc, m)


def batchnorm_running_backward(dout, dmean, dvar, cache):
    # test mode normalises with constants: dx = dout ⊙ gamma / σ_running; the running statistics
    # add (1 - momentum)·(dmean / N + dvar ⊙ 2 (x - μ) / N)
    xhat, inv_std, gamma, xc, m = cache
    n = xhat.shape[0]
    dx = dout * gamma * inv_std + (1 - m) * (dmean + 2 * xc * dvar) / n
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)
