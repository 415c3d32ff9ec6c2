"""Convolution and pooling, NCHW, as im2col over sliding windows (vectorised, loops only over the
kernel offsets in the backward scatter).

Windows: ``_windows(x, hh, ww, stride)[n, c, i, j, u, v] = x[n, c, i*stride + u, j*stride + v]``,
a read-only strided view (no copy). Every backward scatters a window gradient back with one add
per kernel offset (u, v), so overlapping windows (stride < window) accumulate.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "conv2d_forward", "conv2d_backward",
    "max_pool2d_forward", "max_pool2d_backward",
    "avg_pool2d_forward", "avg_pool2d_backward",
]


def _windows(x, hh, ww, stride):
    """x: (..., H, W) -> (..., H', W', hh, ww) view, H' = 1 + (H - hh) // stride."""
    return sliding_window_view(x, (hh, ww), axis=(-2, -1))[..., ::stride, ::stride, :, :]


def _scatter_windows(dwin, shape, stride):
    """Adjoint of _windows: dwin (..., H', W', hh, ww) -> dx of `shape`, summing overlaps."""
    dx = np.zeros(shape, dtype=dwin.dtype)
    ho, wo, hh, ww = dwin.shape[-4:]
    for u in range(hh):
        for v in range(ww):
            rows = slice(u, u + stride * (ho - 1) + 1, stride)
            cols = slice(v, v + stride * (wo - 1) + 1, stride)
            dx[..., rows, cols] += dwin[..., u, v]
    return dx


def _check_window(h, w, hh, ww, stride, what):
    if stride < 1:
        raise ValueError(f"{what}: stride must be >= 1, got {stride}")
    if hh > h or ww > w:
        raise ValueError(f"{what}: window {hh}x{ww} larger than the (padded) input {h}x{w}")


def conv2d_forward(x, w, b, *, stride, pad):
    """x: (N, C, H, W), w: (F, C, HH, WW), b: (F,), zero padding `pad` on each side
    -> (N, F, H', W'), H' = 1 + (H + 2 pad - HH) // stride, W' = 1 + (W + 2 pad - WW) // stride.

    out[n, f, i, j] = b[f] + Σ_{c,u,v} xpad[n, c, i*stride + u, j*stride + v] · w[f, c, u, v]
    (cross-correlation, as cs231n, torch and lax). A leading axis on all three (x: (K, N, C, H, W),
    w: (K, F, C, HH, WW), b: (K, F)) is K convolutions at once.
    """
    hh, ww = w.shape[-2:]
    xp = np.pad(x, ((0, 0),) * (x.ndim - 2) + ((pad, pad), (pad, pad)))
    _check_window(xp.shape[-2], xp.shape[-1], hh, ww, stride, "conv2d")
    win = _windows(xp, hh, ww, stride)  # (N, C, H', W', HH, WW)
    out = np.einsum("...ncijuv,...fcuv->...nfij", win, w, optimize=True) + b[..., None, :, None, None]
    return out, (x.shape, xp.shape, win, w, stride, pad)


def conv2d_backward(dout, cache):
    # dw[f,c,u,v] = Σ_{n,i,j} dout[n,f,i,j]·xpad-window;  db[f] = Σ_{n,i,j} dout[n,f,i,j];
    # dxpad-window[n,c,i,j,u,v] = Σ_f dout[n,f,i,j]·w[f,c,u,v], scattered back and un-padded
    x_shape, xp_shape, win, w, stride, pad = cache
    dw = np.einsum("...nfij,...ncijuv->...fcuv", dout, win, optimize=True)
    db = dout.sum(axis=(-4, -2, -1))
    dwin = np.einsum("...nfij,...fcuv->...ncijuv", dout, w, optimize=True)
    dxp = _scatter_windows(dwin, xp_shape, stride)
    dx = dxp[..., pad:pad + x_shape[-2], pad:pad + x_shape[-1]].copy()
    return dx, dw, db


def max_pool2d_forward(x, *, pool_height, pool_width, stride):
    """x: (N, C, H, W) -> (N, C, H', W') max over each pool_height x pool_width window, no padding,
    H' = 1 + (H - pool_height) // stride (likewise W')."""
    _check_window(x.shape[2], x.shape[3], pool_height, pool_width, stride, "max_pool2d")
    win = _windows(x, pool_height, pool_width, stride)
    flat = win.reshape(*win.shape[:4], pool_height * pool_width)  # window in row-major order
    arg = flat.argmax(axis=-1)  # the FIRST maximum in row-major order (a NaN counts as the max)
    out = np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]
    return out, (x.shape, x.dtype, arg, pool_height, pool_width, stride)


def max_pool2d_backward(dout, cache):
    # each window's upstream gradient goes whole to ONE element, its argmax. At a tie that is the
    # first maximum in row-major order (torch's strict-'>' scan): a valid subgradient, since the
    # credit of the window sums to dout. Giving dout to every tied element would not be.
    x_shape, dtype, arg, ph, pw, stride = cache
    onehot = (arg[..., None] == np.arange(ph * pw)).astype(dtype)  # (N, C, H', W', ph*pw)
    dwin = (onehot * dout[..., None]).reshape(*arg.shape, ph, pw)
    return _scatter_windows(dwin, x_shape, stride)


def avg_pool2d_forward(x, *, pool_height, pool_width, stride):
    """x: (N, C, H, W) -> (N, C, H', W') mean over each pool_height x pool_width window, no padding."""
    _check_window(x.shape[2], x.shape[3], pool_height, pool_width, stride, "avg_pool2d")
    win = _windows(x, pool_height, pool_width, stride)
    out = win.sum(axis=(-2, -1)) / (pool_height * pool_width)
    return out, (x.shape, pool_height, pool_width, stride)


def avg_pool2d_backward(dout, cache):
    # every element of a window gets dout / (pool_height·pool_width); overlaps add up
    x_shape, ph, pw, stride = cache
    share = dout / (ph * pw)
    dwin = np.broadcast_to(share[..., None, None], (*share.shape, ph, pw))
    return _scatter_windows(dwin, x_shape, stride)
