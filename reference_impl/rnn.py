"""Vanilla RNN and LSTM, one step and full backpropagation through time (cs231n layout:
row-vector batches, x_t (N, D) times wx (D, ·)). Seed 000 §RNN/§LSTM, seed 001 §RNN."""
import numpy as np

from ._common import _log_softmax, _sigmoid

__all__ = [
    "rnn_step_forward", "rnn_step_backward",
    "rnn_forward", "rnn_backward",
    "rnn_softmax_sequence_forward", "rnn_softmax_sequence_backward",
    "lstm_step_forward", "lstm_step_backward",
    "lstm_forward", "lstm_backward",
]


def rnn_step_forward(x, prev_h, wx, wh, b):
    """x: (N, D), prev_h: (N, H), wx: (D, H), wh: (H, H), b: (H,) -> next_h (N, H).

    next_h = tanh(x wx + prev_h wh + b). (Here and below, a leading axis on every array is K
    independent networks at once.)
    """
    next_h = np.tanh(x @ wx + prev_h @ wh + b[..., None, :])
    return next_h, (x, prev_h, wx, wh, next_h)


def rnn_step_backward(dnext_h, cache):
    # da = dnext_h ⊙ (1 - next_h²) through the tanh; then a = x wx + prev_h wh + b as an affine map
    x, prev_h, wx, wh, next_h = cache
    da = dnext_h * (1 - next_h * next_h)
    return da @ wx.mT, da @ wh.mT, x.mT @ da, prev_h.mT @ da, da.sum(axis=-2)


def rnn_forward(x, h0, wx, wh, b):
    """x: (N, T, D), h0: (N, H), wx: (D, H), wh: (H, H), b: (H,) -> h (N, T, H), all hidden states."""
    h = np.empty((*x.shape[:-1], h0.shape[-1]), dtype=np.result_type(x, h0, wx, wh, b))
    caches = []
    prev_h = h0
    for t in range(x.shape[-2]):
        prev_h, cache = rnn_step_forward(x[..., t, :], prev_h, wx, wh, b)
        h[..., t, :] = prev_h
        caches.append(cache)
    return h, (x.shape, caches)


def rnn_backward(dh, cache):
    # BPTT: walking t = T-1 .. 0, the gradient reaching h_t is its own upstream dh[:, t] plus what
    # flows back from h_{t+1}; the weights collect their gradient from every step
    x_shape, caches = cache
    wx, wh = caches[0][2], caches[0][3]
    dx = np.empty(x_shape, dtype=dh.dtype)
    dwx, dwh = np.zeros_like(wx), np.zeros_like(wh)
    db = np.zeros(wh.shape[:-1], dtype=dh.dtype)
    dprev_h = np.zeros_like(dh[..., 0, :])
    for t in reversed(range(x_shape[-2])):
        dx[..., t, :], dprev_h, dwx_t, dwh_t, db_t = rnn_step_backward(dh[..., t, :] + dprev_h, caches[t])
        dwx += dwx_t
        dwh += dwh_t
        db += db_t
    return dx, dprev_h, dwx, dwh, db


def rnn_softmax_sequence_forward(x, h0, wx, wh, b, v, c, *, y):
    """RNN with a softmax output at every step (seed 000 §RNN, seed 001 §RNN).

    x: (N, T, D), h0: (N, H), wx: (D, H), wh: (H, H), b: (H,), v: (H, C), c: (C,), y: (N, T) int
    h_t = tanh(x_t wx + h_{t-1} wh + b), z_t = h_t v + c, loss = (1/N) Σ_n Σ_t CE(z_t, y_t), 0-d.
    """
    n = x.shape[0]
    h, rnn_cache = rnn_forward(x, h0, wx, wh, b)
    z = h @ v + c  # (N, T, C)
    logp = _log_softmax(z, axis=2)
    loss = -np.take_along_axis(logp, y[..., None], axis=2).sum() / n
    return np.asarray(loss, dtype=z.dtype), (h, v, logp, y, rnn_cache)


def rnn_softmax_sequence_backward(dout, cache):
    # dz_t = (a_t - y_t) / N  (a_t = softmax(z_t), y_t one-hot);  dc = Σ_t dz_t;  dv = Σ_t h_t^T dz_t;
    # dh_t = dz_t v^T is each step's own gradient; BPTT adds δ_{t+1} ∂h_{t+1}/∂h_t (rnn_backward)
    h, v, logp, y, rnn_cache = cache
    n, t_len, n_cls = logp.shape
    dz = np.exp(logp)
    dz[np.arange(n)[:, None], np.arange(t_len), y] -= 1
    dz *= dout / n
    dv = h.reshape(-1, h.shape[2]).T @ dz.reshape(-1, n_cls)
    dc = dz.sum(axis=(0, 1))
    dh = dz @ v.T
    dx, dh0, dwx, dwh, db = rnn_backward(dh, rnn_cache)
    return dx, dh0, dwx, dwh, db, dv, dc


def lstm_step_forward(x, prev_h, prev_c, wx, wh, b):
    """x: (N, D), prev_h, prev_c: (N, H), wx: (D, 4H), wh: (H, 4H), b: (4H,)
    -> (next_h, next_c), (N, H) each.

    a = x wx + prev_h wh + b, split in gate blocks i, f, o, g (cs231n order; torch uses i, f, g, o);
    i, f, o = σ(a_i), σ(a_f), σ(a_o); g = tanh(a_g);
    next_c = f ⊙ prev_c + i ⊙ g;  next_h = o ⊙ tanh(next_c)
    """
    hd = prev_h.shape[-1]
    a = x @ wx + prev_h @ wh + b[..., None, :]
    i, f, o = _sigmoid(a[..., :hd]), _sigmoid(a[..., hd:2 * hd]), _sigmoid(a[..., 2 * hd:3 * hd])
    g = np.tanh(a[..., 3 * hd:])
    next_c = f * prev_c + i * g
    tc = np.tanh(next_c)
    next_h = o * tc
    return (next_h, next_c), (x, prev_h, prev_c, wx, wh, i, f, o, g, tc)


def lstm_step_backward(dnext_h, dnext_c, cache):
    # dc = dnext_c + dnext_h ⊙ o ⊙ (1 - tanh²(next_c))  (next_c reaches the loss directly and via next_h);
    # di = dc ⊙ g, df = dc ⊙ prev_c, do = dnext_h ⊙ tanh(next_c), dg = dc ⊙ i, dprev_c = dc ⊙ f;
    # through the nonlinearities: σ' = σ(1-σ), tanh' = 1 - tanh²; then a = x wx + prev_h wh + b
    x, prev_h, prev_c, wx, wh, i, f, o, g, tc = cache
    dc = dnext_c + dnext_h * o * (1 - tc * tc)
    da = np.concatenate([
        dc * g * i * (1 - i),
        dc * prev_c * f * (1 - f),
        dnext_h * tc * o * (1 - o),
        dc * i * (1 - g * g),
    ], axis=-1)
    return da @ wx.mT, da @ wh.mT, dc * f, x.mT @ da, prev_h.mT @ da, da.sum(axis=-2)


def lstm_forward(x, h0, wx, wh, b):
    """x: (N, T, D), h0: (N, H), wx: (D, 4H), wh: (H, 4H), b: (4H,) -> h (N, T, H); c0 = 0."""
    h = np.empty((*x.shape[:-1], h0.shape[-1]), dtype=np.result_type(x, h0, wx, wh, b))
    prev_h, prev_c = h0, np.zeros_like(h0)
    caches = []
    for t in range(x.shape[-2]):
        (prev_h, prev_c), cache = lstm_step_forward(x[..., t, :], prev_h, prev_c, wx, wh, b)
        h[..., t, :] = prev_h
        caches.append(cache)
    return h, (x.shape, caches)


def lstm_backward(dh, cache):
    # BPTT through both carries: h_t gets dh[:, t] plus the gradient from step t+1, c_t only the
    # latter (the cell state is not an output); c0 = 0 is a constant, so its gradient is dropped
    x_shape, caches = cache
    wx, wh = caches[0][3], caches[0][4]
    dx = np.empty(x_shape, dtype=dh.dtype)
    dwx, dwh = np.zeros_like(wx), np.zeros_like(wh)
    db = np.zeros(wh[..., 0, :].shape, dtype=dh.dtype)
    dprev_h = np.zeros_like(dh[..., 0, :])
    dprev_c = np.zeros_like(dh[..., 0, :])
    for t in reversed(range(x_shape[-2])):
        dx[..., t, :], dprev_h, dprev_c, dwx_t, dwh_t, db_t = lstm_step_backward(
            dh[..., t, :] + dprev_h, dprev_c, caches[t])
        dwx += dwx_t
        dwh += dwh_t
        db += db_t
    return dx, dprev_h, dwx, dwh, db
