"""cs231n layers that misbehave the way unfinished or broken homework does: they raise, return
None, return the wrong number, shape or dtype of gradients, return NaN, never return, call
sys.exit or os._exit, crash the interpreter, or print megabytes.

    gradaudit audit examples/cs231n/layers_misbehaving.py --convention cs231n --timeout 5

reports each of them as an `error` naming the function, the gradient and expected vs got, and keeps
going: affine_*, lstm_*, word_embedding_* and temporal_softmax_loss are correct and pass.
spatial_batchnorm_* are not defined: they are listed as not checked.
"""
import ctypes
import os
import sys

import numpy as np


def affine_forward(x, w, b):  # correct
    return x.reshape(x.shape[0], -1) @ w + b, (x, w)


def affine_backward(dout, cache):  # correct
    x, w = cache
    return (dout @ w.T).reshape(x.shape), x.reshape(x.shape[0], -1).T @ dout, dout.sum(axis=0)


def relu_forward(x):
    return np.maximum(x, 0), x


def relu_backward(dout, cache):
    # MISBEHAVES: raises, with terminal escape codes and a newline in its message
    raise NotImplementedError("\x1b[2J\x1b[31mTODO: implement the ReLU backward pass\x1b[0m\nsee lecture 4")


def softmax_loss(x, y):
    # MISBEHAVES: returns None (the body was never written)
    pass


def svm_loss(x, y):
    # MISBEHAVES: returns the loss only, not (loss, dx)
    n = x.shape[0]
    margins = np.maximum(0, x - x[np.arange(n), y][:, None] + 1)
    margins[np.arange(n), y] = 0
    return margins.sum() / n


def batchnorm_forward(x, gamma, beta, bn_param):
    eps = bn_param.get("eps", 1e-5)
    xc = x - x.mean(axis=0)
    std = np.sqrt((xc ** 2).mean(axis=0) + eps)
    xhat = xc / std
    return gamma * xhat + beta, (xhat, std, gamma)


def batchnorm_backward(dout, cache):
    # MISBEHAVES: returns two gradients, not three (dbeta forgotten)
    xhat, std, gamma = cache
    n = dout.shape[0]
    dxhat = dout * gamma
    dx = (n * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0)) / (n * std)
    return dx, (dout * xhat).sum(axis=0)


def batchnorm_backward_alt(dout, cache):
    # MISBEHAVES: dgamma and dbeta keep the summed axis: shape (1, D) instead of (D,)
    xhat, std, gamma = cache
    n = dout.shape[0]
    dxhat = dout * gamma
    dx = (n * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0)) / (n * std)
    return dx, (dout * xhat).sum(axis=0, keepdims=True), dout.sum(axis=0, keepdims=True)


def layernorm_forward(x, gamma, beta, ln_param):
    eps = ln_param.get("eps", 1e-5)
    xc = x - x.mean(axis=1, keepdims=True)
    std = np.sqrt((xc ** 2).mean(axis=1, keepdims=True) + eps)
    xhat = xc / std
    return gamma * xhat + beta, (xhat, std, gamma)


def layernorm_backward(dout, cache):
    # MISBEHAVES: always returns float32 gradients, whatever the input's dtype
    xhat, std, gamma = cache
    d = dout.shape[1]
    dxhat = dout * gamma
    dx = (d * dxhat - dxhat.sum(axis=1, keepdims=True) - xhat * (dxhat * xhat).sum(axis=1, keepdims=True)) / (d * std)
    return dx.astype(np.float32), (dout * xhat).sum(axis=0).astype(np.float32), dout.sum(axis=0).astype(np.float32)


def dropout_forward(x, dropout_param):
    # MISBEHAVES: never returns in train mode (a loop whose exit condition is never met)
    if dropout_param["mode"] == "train":
        kept = 0
        while kept >= 0:
            kept += 1
    return x, (dropout_param, None)


def dropout_backward(dout, cache):
    return dout


def conv_forward_naive(x, w, b, conv_param):
    stride, pad = conv_param["stride"], conv_param["pad"]
    _, _, hh, ww = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    h_out, w_out = 1 + (xp.shape[2] - hh) // stride, 1 + (xp.shape[3] - ww) // stride
    out = np.zeros((x.shape[0], w.shape[0], h_out, w_out), dtype=x.dtype)
    for i in range(h_out):
        for j in range(w_out):
            window = xp[:, :, i * stride:i * stride + hh, j * stride:j * stride + ww]
            out[:, :, i, j] = np.tensordot(window, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return out, (x, w, b, conv_param)


def conv_backward_naive(dout, cache):
    # MISBEHAVES: dw is NaN (0/0 from a "normalisation" of an all-zero accumulator)
    x, w, b, conv_param = cache
    stride, pad = conv_param["stride"], conv_param["pad"]
    _, _, hh, ww = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp, acc = np.zeros_like(xp), np.zeros_like(w)
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            dxp[:, :, i * stride:i * stride + hh, j * stride:j * stride + ww] += np.tensordot(
                dout[:, :, i, j], w, axes=([1], [0]))
    with np.errstate(invalid="ignore"):
        dw = acc / acc.sum()
    return dxp[:, :, pad:pad + x.shape[2], pad:pad + x.shape[3]], dw, dout.sum(axis=(0, 2, 3))


def max_pool_forward_naive(x, pool_param):
    ph, pw, s = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    h_out, w_out = 1 + (x.shape[2] - ph) // s, 1 + (x.shape[3] - pw) // s
    out = np.zeros((*x.shape[:2], h_out, w_out), dtype=x.dtype)
    for i in range(h_out):
        for j in range(w_out):
            out[:, :, i, j] = x[:, :, i * s:i * s + ph, j * s:j * s + pw].max(axis=(2, 3))
    return out, (x, pool_param)


def max_pool_backward_naive(dout, cache):
    # MISBEHAVES: gives up and exits the interpreter
    sys.exit(3)


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    next_h = np.tanh(x @ Wx + prev_h @ Wh + b)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h, cache):
    # MISBEHAVES: leaves the process at once, no exception, no cleanup
    os._exit(7)


def rnn_forward(x, h0, Wx, Wh, b):
    h, prev_h, caches = np.zeros((*x.shape[:2], h0.shape[1]), dtype=x.dtype), h0, []
    for t in range(x.shape[1]):
        prev_h, cache = rnn_step_forward(x[:, t, :], prev_h, Wx, Wh, b)
        h[:, t, :] = prev_h
        caches.append(cache)
    return h, caches


def rnn_backward(dh, cache):
    # MISBEHAVES: crashes the interpreter (reads address 0: a segmentation fault)
    return ctypes.string_at(0)


def _sigmoid(x):
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + z), z / (1 + z))


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    h = prev_h.shape[1]
    a = x @ Wx + prev_h @ Wh + b
    i, f, o, g = _sigmoid(a[:, :h]), _sigmoid(a[:, h:2 * h]), _sigmoid(a[:, 2 * h:3 * h]), np.tanh(a[:, 3 * h:])
    next_c = f * prev_c + i * g
    return o * np.tanh(next_c), next_c, (x, prev_h, prev_c, Wx, Wh, i, f, o, g, next_c)


def _lstm_step_grads(dnext_h, dnext_c, cache):
    x, prev_h, prev_c, Wx, Wh, i, f, o, g, next_c = cache
    tc = np.tanh(next_c)
    dc = dnext_c + dnext_h * o * (1 - tc ** 2)
    da = np.hstack((dc * g * i * (1 - i), dc * prev_c * f * (1 - f), dnext_h * tc * o * (1 - o), dc * i * (1 - g ** 2)))
    return da @ Wx.T, da @ Wh.T, dc * f, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def lstm_step_backward(dnext_h, dnext_c, cache):
    # MISBEHAVES: right gradients, but a debugging print left in a loop: ~2 MB per call, escape codes included
    for k in range(20000):
        print(f"\x1b[1;31mdebug\x1b[0m step {k}: dnext_h = {float(dnext_h.ravel()[0]):+.6f} " + "#" * 60)
    return _lstm_step_grads(dnext_h, dnext_c, cache)


def lstm_forward(x, h0, Wx, Wh, b):  # correct
    h, prev_h, prev_c, caches = np.zeros((*x.shape[:2], h0.shape[1]), dtype=x.dtype), h0, np.zeros_like(h0), []
    for t in range(x.shape[1]):
        prev_h, prev_c, cache = lstm_step_forward(x[:, t, :], prev_h, prev_c, Wx, Wh, b)
        h[:, t, :] = prev_h
        caches.append(cache)
    return h, caches


def lstm_backward(dh, cache):  # correct
    caches = cache
    dx = np.zeros((*dh.shape[:2], caches[0][0].shape[1]), dtype=dh.dtype)
    dWx, dWh = np.zeros_like(caches[0][3]), np.zeros_like(caches[0][4])
    db = np.zeros(dWh.shape[1], dtype=dh.dtype)
    dprev_h, dprev_c = np.zeros_like(dh[:, 0, :]), np.zeros_like(dh[:, 0, :])
    for t in reversed(range(dh.shape[1])):
        dx[:, t, :], dprev_h, dprev_c, dWx_t, dWh_t, db_t = _lstm_step_grads(dh[:, t, :] + dprev_h, dprev_c, caches[t])
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    return dx, dprev_h, dWx, dWh, db


def word_embedding_forward(x, W):  # correct
    return W[x], (x, W)


def word_embedding_backward(dout, cache):  # correct
    x, W = cache
    dW = np.zeros_like(W)
    np.add.at(dW, x, dout)
    return dW


def temporal_affine_forward(x, w, b):
    return x @ w + b, (x, w)


def temporal_affine_backward(dout, cache):
    # MISBEHAVES: db was never written
    x, w = cache
    return dout @ w.T, x.reshape(-1, x.shape[2]).T @ dout.reshape(-1, dout.shape[2]), None


def temporal_softmax_loss(x, y, mask, verbose=False):  # correct
    n, t, v = x.shape
    xf, yf, mf = x.reshape(n * t, v), y.reshape(n * t), mask.reshape(n * t)
    logp = xf - xf.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    loss = -(mf * logp[np.arange(n * t), yf]).sum() / n
    dx = np.exp(logp)
    dx[np.arange(n * t), yf] -= 1
    dx *= mf[:, None] / n
    return loss, dx.reshape(n, t, v)
