"""cs231n layers with the mistakes students really make, one per function (the comment `BUG:` says
which). `gradaudit audit examples/cs231n/layers_buggy.py --convention cs231n` flags each of them
on its own function, with a minimal counterexample and, where the error has a recognisable shape,
its pattern. temporal_affine_* are correct: they pass.
"""
import numpy as np


def affine_forward(x, w, b):
    out = x.reshape(x.shape[0], -1) @ w + b
    return out, (x, w, b)


def affine_backward(dout, cache):
    x, w, b = cache
    dx = (dout @ w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T @ dout
    db = np.mean(dout, axis=0)  # BUG: the bias is added to every row, so its gradient is the SUM
    return dx, dw, db


def relu_forward(x):
    return np.maximum(x, 0), x


def relu_backward(dout, cache):
    x = cache
    dx = dout  # BUG: an alias, not a copy: the next line writes into the caller's dout
    dx[x <= 0] = 0
    return dx


def softmax_loss(x, y):
    n = x.shape[0]
    probs = np.exp(x)  # BUG: no max shift: exp overflows for large scores (inf / inf = nan)
    probs /= probs.sum(axis=1, keepdims=True)
    loss = -np.log(probs[np.arange(n), y]).sum() / n
    dx = probs.copy()
    dx[np.arange(n), y] -= 1
    return loss, dx / n


def svm_loss(x, y):
    n = x.shape[0]
    correct = x[np.arange(n), y][:, None]
    margins = np.maximum(0, x - correct + 1)  # BUG: the correct class's own margin (always 1) is
    loss = margins.sum() / n                  # never zeroed: the loss is 1 too high per example
    dx = (margins > 0).astype(x.dtype)
    dx[np.arange(n), y] = 0
    dx[np.arange(n), y] = -dx.sum(axis=1)
    return loss, dx / n


def batchnorm_forward(x, gamma, beta, bn_param):
    eps = bn_param.get("eps", 1e-5)
    mu = x.mean(axis=0)
    var = x.var(axis=0)
    xhat = (x - mu) / np.sqrt(var + eps)
    return gamma * xhat + beta, (x, xhat, mu, var, eps, gamma)


def batchnorm_backward(dout, cache):
    x, xhat, mu, var, eps, gamma = cache
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dx = dout * gamma / np.sqrt(var + eps)  # BUG: treats the batch mean and variance as constants
    return dx, dgamma, dbeta


def batchnorm_backward_alt(dout, cache):
    x, xhat, mu, var, eps, gamma = cache
    n = dout.shape[0]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dxhat = dout * gamma
    # BUG: the variance path (- xhat * Σ dxhat·xhat) is dropped from the simplified formula
    dx = (n * dxhat - dxhat.sum(axis=0)) / (n * np.sqrt(var + eps))
    return dx, dgamma, dbeta


def layernorm_forward(x, gamma, beta, ln_param):
    eps = ln_param.get("eps", 1e-5)
    mu = x.mean(axis=1, keepdims=True)
    var = x.var(axis=1, keepdims=True)
    xhat = (x - mu) / np.sqrt(var + eps)
    return gamma * xhat + beta, (xhat, var, eps, gamma)


def layernorm_backward(dout, cache):
    xhat, var, eps, gamma = cache
    d = dout.shape[1]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dxhat = dout * gamma
    # BUG: copied from batchnorm: the sums run over the batch (axis 0) instead of each row (axis 1)
    dx = (d * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0)) / (d * np.sqrt(var + eps))
    return dx, dgamma, dbeta


def dropout_forward(x, dropout_param):
    p, mode = dropout_param["p"], dropout_param["mode"]
    if "seed" in dropout_param:
        np.random.seed(dropout_param["seed"])
    mask = None
    if mode == "train":
        mask = np.random.rand(*x.shape) < p
        out = x * mask / p
    else:
        out = x
    return out, (dropout_param, mask)


def dropout_backward(dout, cache):
    dropout_param, mask = cache
    if dropout_param["mode"] == "train":
        return dout * mask  # BUG: the forward divided by p; the backward must too
    return dout


def conv_forward_naive(x, w, b, conv_param):
    stride, pad = conv_param["stride"], conv_param["pad"]
    n, c, h, wd = x.shape
    f, _, hh, ww = w.shape
    h_out, w_out = 1 + (h + 2 * pad - hh) // stride, 1 + (wd + 2 * pad - ww) // stride
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, f, h_out, w_out), dtype=x.dtype)
    for i in range(h_out):
        for j in range(w_out):
            window = xp[:, :, i * stride:i * stride + hh, j * stride:j * stride + ww]
            out[:, :, i, j] = np.tensordot(window, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return out, (x, w, b, conv_param)


def conv_backward_naive(dout, cache):
    x, w, b, conv_param = cache
    pad = conv_param["pad"]
    _, _, hh, ww = w.shape
    _, _, h_out, w_out = dout.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    db = dout.sum(axis=(0, 2, 3))
    for i in range(h_out):
        for j in range(w_out):
            window = xp[:, :, i:i + hh, j:j + ww]  # BUG: the window starts at i, not i * stride
            dw += np.tensordot(dout[:, :, i, j], window, axes=([0], [0]))
            dxp[:, :, i:i + hh, j:j + ww] += np.tensordot(dout[:, :, i, j], w, axes=([1], [0]))
    return dxp[:, :, pad:pad + x.shape[2], pad:pad + x.shape[3]], dw, db


def max_pool_forward_naive(x, pool_param):
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    n, c, h, w = x.shape
    h_out, w_out = 1 + (h - ph) // stride, 1 + (w - pw) // stride
    out = np.zeros((n, c, h_out, w_out), dtype=x.dtype)
    for i in range(h_out):
        for j in range(w_out):
            out[:, :, i, j] = x[:, :, i * stride:i * stride + ph, j * stride:j * stride + pw].max(axis=(2, 3))
    return out, (x, pool_param)


def max_pool_backward_naive(dout, cache):
    x, pool_param = cache
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    _, _, h_out, w_out = dout.shape
    dx = np.zeros_like(x)
    for i in range(h_out):
        for j in range(w_out):
            window = x[:, :, i * stride:i * stride + ph, j * stride:j * stride + pw]
            # BUG: at a tie every maximum gets the whole gradient (the window's credit then sums to
            # more than dout)
            is_max = window == window.max(axis=(2, 3), keepdims=True)
            dx[:, :, i * stride:i * stride + ph, j * stride:j * stride + pw] += is_max * dout[:, :, i, j][:, :, None, None]
    return dx


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    next_h = np.tanh(x @ Wx + prev_h @ Wh + b)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h, cache):
    x, prev_h, Wx, Wh, next_h = cache
    da = dnext_h * (1 - prev_h ** 2)  # BUG: tanh' at the wrong step: 1 - next_h², not 1 - prev_h²
    return da @ Wx.T, da @ Wh.T, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def _rnn_step_backward(dnext_h, cache):  # a correct step, used by rnn_backward below
    x, prev_h, Wx, Wh, next_h = cache
    da = dnext_h * (1 - next_h ** 2)
    return da @ Wx.T, da @ Wh.T, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def rnn_forward(x, h0, Wx, Wh, b):
    n, t_len, _ = x.shape
    h = np.zeros((n, t_len, h0.shape[1]), dtype=x.dtype)
    prev_h, caches = h0, []
    for t in range(t_len):
        prev_h, cache = rnn_step_forward(x[:, t, :], prev_h, Wx, Wh, b)
        h[:, t, :] = prev_h
        caches.append(cache)
    return h, caches


def rnn_backward(dh, cache):
    caches = cache
    n, t_len, _ = dh.shape
    dx = np.zeros((n, t_len, caches[0][0].shape[1]), dtype=dh.dtype)
    dWx, dWh = np.zeros_like(caches[0][2]), np.zeros_like(caches[0][3])
    db = np.zeros(dh.shape[2], dtype=dh.dtype)
    dprev_h = np.zeros_like(dh[:, 0, :])
    for t in range(t_len - 1, 0, -1):  # BUG: off by one: step t = 0 is never back-propagated
        dx[:, t, :], dprev_h, dWx_t, dWh_t, db_t = _rnn_step_backward(dh[:, t, :] + dprev_h, caches[t])
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    return dx, dprev_h, dWx, dWh, db


def sigmoid(x):
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + z), z / (1 + z))


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    h = prev_h.shape[1]
    a = x @ Wx + prev_h @ Wh + b
    i, f, o = sigmoid(a[:, :h]), sigmoid(a[:, h:2 * h]), sigmoid(a[:, 2 * h:3 * h])
    g = np.tanh(a[:, 3 * h:])
    next_c = f * prev_c + i * g
    next_h = o * np.tanh(next_c)
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, i, f, o, g, next_c)


def lstm_step_backward(dnext_h, dnext_c, cache):
    x, prev_h, prev_c, Wx, Wh, i, f, o, g, next_c = cache
    tc = np.tanh(next_c)
    dc = dnext_c + dnext_h * o * (1 - tc ** 2)
    di, df, do, dg = dc * g, dc * prev_c, dnext_h * tc, dc * i
    # BUG: the gate blocks are stacked i, f, g, o (PyTorch's order), the forward split them i, f, o, g
    da = np.hstack((di * i * (1 - i), df * f * (1 - f), dg * (1 - g ** 2), do * o * (1 - o)))
    return da @ Wx.T, da @ Wh.T, dc * f, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def _lstm_step_backward(dnext_h, dnext_c, cache):  # a correct step, used by lstm_backward below
    x, prev_h, prev_c, Wx, Wh, i, f, o, g, next_c = cache
    tc = np.tanh(next_c)
    dc = dnext_c + dnext_h * o * (1 - tc ** 2)
    da = np.hstack((dc * g * i * (1 - i), dc * prev_c * f * (1 - f), dnext_h * tc * o * (1 - o), dc * i * (1 - g ** 2)))
    return da @ Wx.T, da @ Wh.T, dc * f, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def lstm_forward(x, h0, Wx, Wh, b):
    n, t_len, _ = x.shape
    h = np.zeros((n, t_len, h0.shape[1]), dtype=x.dtype)
    prev_h, prev_c, caches = h0, np.zeros_like(h0), []
    for t in range(t_len):
        prev_h, prev_c, cache = lstm_step_forward(x[:, t, :], prev_h, prev_c, Wx, Wh, b)
        h[:, t, :] = prev_h
        caches.append(cache)
    return h, caches


def lstm_backward(dh, cache):
    caches = cache
    n, t_len, _ = dh.shape
    dx = np.zeros((n, t_len, caches[0][0].shape[1]), dtype=dh.dtype)
    dWx, dWh = np.zeros_like(caches[0][3]), np.zeros_like(caches[0][4])
    db = np.zeros(dWh.shape[1], dtype=dh.dtype)
    dprev_h = np.zeros_like(dh[:, 0, :])
    for t in reversed(range(t_len)):
        # BUG: the cell state's gradient is not carried to the previous step (dnext_c = 0 each time)
        dx[:, t, :], dprev_h, _, dWx_t, dWh_t, db_t = _lstm_step_backward(
            dh[:, t, :] + dprev_h, np.zeros_like(dprev_h), caches[t])
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    return dx, dprev_h, dWx, dWh, db


def word_embedding_forward(x, W):
    return W[x], (x, W)


def word_embedding_backward(dout, cache):
    x, W = cache
    dW = np.zeros_like(W)
    dW[x] += dout  # BUG: fancy-index += keeps only one of repeated words (np.add.at adds them all)
    return dW


def temporal_affine_forward(x, w, b):
    n, t, d = x.shape
    return (x.reshape(n * t, d) @ w + b).reshape(n, t, -1), (x, w, b)


def temporal_affine_backward(dout, cache):
    x, w, b = cache
    n, t, d = x.shape
    m = b.shape[0]
    dx = (dout.reshape(n * t, m) @ w.T).reshape(n, t, d)
    dw = x.reshape(n * t, d).T @ dout.reshape(n * t, m)
    return dx, dw, dout.sum(axis=(0, 1))


def temporal_softmax_loss(x, y, mask, verbose=False):
    n, t, v = x.shape
    x_flat, y_flat, mask_flat = x.reshape(n * t, v), y.reshape(n * t), mask.reshape(n * t)
    probs = np.exp(x_flat - x_flat.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    loss = -(mask_flat * np.log(probs[np.arange(n * t), y_flat])).sum() / n
    dx = probs.copy()
    dx[np.arange(n * t), y_flat] -= 1
    dx /= n  # BUG: the mask is applied to the loss but not to its gradient
    return loss, dx.reshape(n, t, v)


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    n, c, h, w = x.shape
    x2 = x.reshape(-1, c)  # BUG: reshaping NCHW to (N·H·W, C) without moving C last mixes channels
    out, cache = batchnorm_forward(x2, gamma, beta, bn_param)
    return out.reshape(n, c, h, w), cache


def spatial_batchnorm_backward(dout, cache):
    n, c, h, w = dout.shape
    x, xhat, mu, var, eps, gamma = cache
    dxhat = dout.reshape(-1, c) * gamma
    m = dxhat.shape[0]
    dx = (m * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0)) / (m * np.sqrt(var + eps))
    return dx.reshape(n, c, h, w), (dout.reshape(-1, c) * xhat).sum(axis=0), dout.reshape(-1, c).sum(axis=0)
