"""Catalogue forwards written with torch's built-in ops, so autograd uses torch's own derivatives.

Paired with the reference by name (docs/op_contract.md). Imported only by the torch oracle.
Conventions at kinks and ties are noted per op, with the row of ../shared/CONVENTIONS.md.
Float array params (``y`` of mse, ``mask``) are cast to the input's dtype, so the output keeps it.
"""
import warnings

import torch
import torch.nn.functional as F


# --- scalar chain-rule gates ------------------------------------------------------------------

def add_gate(x, y):
    return torch.add(x, y)


def multiply_gate(x, y):
    return torch.mul(x, y)


def max_gate(x, y):
    return torch.maximum(x, y)  # tie x == y: ½ to each side (CONVENTIONS row 2)


def sigmoid_neuron(w, x):
    return torch.sigmoid(torch.addmv(w[2], x, w[:2]))  # w2 + x @ w[:2], shape (N,)


def chain_rule_example(x, y, z):
    return torch.mul(torch.add(x, y), z)


# --- linear layers ----------------------------------------------------------------------------

def affine(x, w, b):
    return F.linear(x.reshape(x.shape[0], -1), w.T, b)


def linear_column(w, x, b):
    return torch.addmm(b, w, x)  # b (M, 1) broadcasts over the N columns


def temporal_affine(x, w, b):
    return F.linear(x, w.T, b)


# --- activations ------------------------------------------------------------------------------

def relu(x):
    return F.relu(x)  # gradient 0 at 0: threshold_backward zeroes result <= 0 (CONVENTIONS row 1)


def sigmoid(x):
    return torch.sigmoid(x)


def tanh(x):
    return torch.tanh(x)


def softmax(x):
    return torch.softmax(x, dim=1)


def log_softmax(x):
    return F.log_softmax(x, dim=1)


# --- losses and regularisers ------------------------------------------------------------------

def softmax_cross_entropy(x, *, y):
    return F.cross_entropy(x, y.long(), reduction="mean")


def mse(a, *, y):
    return F.mse_loss(a, y.to(a.dtype), reduction="sum") / 2


def svm_hinge(x, *, y):
    # multi_margin_loss divides each row's sum by C (CONVENTIONS row 24): multiply it back.
    # Hinge at exactly 0 (x_j - x_y + 1 == 0): gradient 0, the kernel only counts `z > 0`.
    return F.multi_margin_loss(x, y.long(), p=1, margin=1.0, reduction="mean") * x.shape[1]


def l2_regularization(w, *, reg):
    return reg * torch.sum(torch.square(w))


def dropout(x, *, p, mode, mask):
    # The mask is injected (framework RNGs differ, CONVENTIONS row 21); p is the KEEP probability.
    if mode == "train":
        return x * mask.to(x.dtype) / p
    if mode == "test":
        return x
    raise ValueError(f"dropout: mode must be 'train' or 'test', got {mode!r}")


def temporal_softmax_loss(x, *, y, mask):
    # Masked-out steps get ignore_index, so they contribute exactly nothing (no 0 * CE products).
    N, T, V = x.shape
    y = torch.where(mask.bool(), y.long(), -100).reshape(N * T)
    return F.cross_entropy(x.reshape(N * T, V), y, ignore_index=-100, reduction="sum") / N


# --- convolution and pooling ------------------------------------------------------------------

def conv2d(x, w, b, *, stride, pad):
    return F.conv2d(x, w, b, stride=stride, padding=pad)  # zero padding


def max_pool2d(x, *, pool_height, pool_width, stride):
    # Ties inside a window: the whole gradient goes to ONE element, the first in row-major order
    # (aten/src/ATen/native/cpu/MaxPoolKernel.cpp keeps `val > maxval || isnan(val)`: NaN wins).
    # Overlapping windows pick independently. CONVENTIONS row 7.
    return F.max_pool2d(x, (pool_height, pool_width), stride=stride)


def avg_pool2d(x, *, pool_height, pool_width, stride):
    # No padding, so count_include_pad and ceil_mode (CONVENTIONS row 20) do not come into play.
    return F.avg_pool2d(x, (pool_height, pool_width), stride=stride)


# --- recurrent networks -----------------------------------------------------------------------

def _cs231n_to_torch_gates(a):
    """Reorder the 4H gate blocks along dim 0 from cs231n's i, f, o, g to torch's i, f, g, o."""
    i, f, o, g = a.chunk(4, dim=0)
    return torch.cat([i, f, g, o], dim=0)


def rnn_step(x, prev_h, wx, wh, b):
    return torch.rnn_tanh_cell(x, prev_h, wx.T, wh.T, b, None)  # one bias (b_hh = None)


def _cudnn_rnn_quietly(fn, *args):
    # On CUDA, cuDNN wants the weights in one flat buffer (nn.RNN's flatten_parameters) and copies
    # separate ones on every call, with a warning each time; separate weights are the point here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
        return fn(*args)


def rnn(x, h0, wx, wh, b):
    # torch's own full-sequence RNN; it has two biases (CONVENTIONS row 22): b_hh = 0. cuDNN (CUDA)
    # views each weight into its flat buffer and refuses a transposed one: contiguous copies.
    params = [wx.T.contiguous(), wh.T.contiguous(), b, torch.zeros_like(b)]
    h, _ = _cudnn_rnn_quietly(torch.rnn_tanh, x, h0.unsqueeze(0), params, True, 1, 0.0, True, False, True)
    return h


def rnn_softmax_sequence(x, h0, wx, wh, b, v, c, *, y):
    h = rnn(x, h0, wx, wh, b)
    N, T, _ = h.shape
    scores = F.linear(h, v.T, c).reshape(N * T, -1)
    return F.cross_entropy(scores, y.long().reshape(N * T), reduction="sum") / N


def lstm_step(x, prev_h, prev_c, wx, wh, b):
    # torch.lstm_cell takes (4H, D) weights with gates i, f, g, o (CONVENTIONS row 22).
    w_ih = _cs231n_to_torch_gates(wx.T)
    w_hh = _cs231n_to_torch_gates(wh.T)
    # b_hh = 0 rather than None: CUDA's fused LSTM cell backward needs both biases defined
    b_ih = _cs231n_to_torch_gates(b)
    return torch.lstm_cell(x, (prev_h, prev_c), w_ih, w_hh, b_ih, torch.zeros_like(b_ih))


def lstm(x, h0, wx, wh, b):
    # torch's own full-sequence LSTM (gates i, f, g, o; two biases: b_hh = 0), c0 = 0.
    b_ih = _cs231n_to_torch_gates(b)
    w_ih, w_hh = _cs231n_to_torch_gates(wx.T), _cs231n_to_torch_gates(wh.T)
    params = [w_ih, w_hh, b_ih, torch.zeros_like(b_ih)]
    hx = (h0.unsqueeze(0), torch.zeros_like(h0).unsqueeze(0))
    h, _, _ = _cudnn_rnn_quietly(torch.lstm, x, hx, params, True, 1, 0.0, True, False, True)
    return h


# --- normalisation and embedding --------------------------------------------------------------

def batchnorm(x, gamma, beta, *, eps):
    # Train mode normalises with the BIASED batch variance (the unbiased one only feeds the
    # running stats, which are not kept here). Variance algorithm differs from NumPy's two-pass
    # (CONVENTIONS row 13): a TOL matter, not a convention.
    return F.batch_norm(x, None, None, gamma, beta, training=True, momentum=0.0, eps=eps)


def layernorm(x, gamma, beta, *, eps):
    return F.layer_norm(x, (x.shape[1],), gamma, beta, eps=eps)  # biased per-row variance


def embedding(w, *, idx):
    return F.embedding(idx.long(), w)  # repeated indices: gradients accumulate


# --- small networks from the notes ------------------------------------------------------------

def mlp_sigmoid_mse(x, w1, b1, w2, b2, *, y):
    a1 = torch.sigmoid(F.linear(x, w1.T, b1))
    a2 = torch.sigmoid(F.linear(a1, w2.T, b2))
    return F.mse_loss(a2, y.to(a2.dtype), reduction="sum") / 2


def two_layer_net(x, w1, b1, w2, b2, *, y, reg):
    hidden = F.relu(F.linear(x, w1.T, b1))  # ReLU: gradient 0 at 0 (CONVENTIONS row 1)
    scores = F.linear(hidden, w2.T, b2)
    loss = F.cross_entropy(scores, y.long(), reduction="mean")
    return loss + reg * (torch.sum(torch.square(w1)) + torch.sum(torch.square(w2)))


# --- spatial normalisation, and batchnorm's running statistics --------------------------------

def spatial_batchnorm(x, gamma, beta, *, eps):
    # F.batch_norm on a 4-d input normalises each channel over its N·H·W values (biased variance)
    return F.batch_norm(x, None, None, gamma, beta, training=True, momentum=0.0, eps=eps)


def spatial_groupnorm(x, gamma, beta, *, G, eps):
    # gamma, beta (1, C, 1, 1) as in cs231n; F.group_norm wants (C,). Biased variance per group.
    return F.group_norm(x, G, gamma.reshape(-1), beta.reshape(-1), eps=eps)


def batchnorm_running(x, gamma, beta, *, running_mean, running_var, momentum, eps):
    # test mode: F.batch_norm with training=False normalises with the running statistics it is given
    # (and leaves them alone). The train-mode update is cs231n's, not torch's buffer update: torch
    # weighs the old value by 1 - momentum and feeds its buffer the UNBIASED variance, so it is
    # written with torch's reductions (their derivatives are torch's own).
    out = F.batch_norm(x, running_mean, running_var, gamma, beta, training=False, eps=eps)
    new_mean = momentum * running_mean + (1 - momentum) * torch.mean(x, dim=0)
    new_var = momentum * running_var + (1 - momentum) * torch.var(x, dim=0, correction=0)
    return out, new_mean, new_var


# --- linear classifiers of assignment 1: s = X W, W differentiated -----------------------------

def linear_svm(W, *, X, y, reg, reg_scale=1.0):
    return svm_hinge(torch.matmul(X.to(W.dtype), W), y=y) + reg_scale * reg * torch.sum(torch.square(W))


def linear_softmax(W, *, X, y, reg, reg_scale=1.0):
    return softmax_cross_entropy(torch.matmul(X.to(W.dtype), W), y=y) + reg_scale * reg * torch.sum(torch.square(W))


# --- the assignments' model classes, built from the ops above (audit only: gradaudit/models.py) ---
# Params come positionally in the order of properties/catalogue/_models.py; the data, labels,
# dropout masks and running statistics are keyword params. Without labels a model returns its
# test-mode scores with a zero gradient (the class has no backward for them: only the values count).

def _scores_only(scores, params):
    return scores.detach() + 0 * params[0].sum()


def _batchnorm_running(x, gamma, beta, running_mean, running_var, *, eps):
    return F.batch_norm(x, running_mean.to(x.dtype), running_var.to(x.dtype), gamma, beta, training=False, eps=eps)


def fc_net(*params, X, layers, normalization=None, reg=0.0, reg_scale=1.0, eps=1e-5, y=None, **extra):
    # {affine - [batch/layer norm] - relu - [dropout]} x (layers - 1) - affine - softmax; W1, b1,
    # [gamma1, beta1,] W2, ... The dropout masks come already scaled (the user's own, read back).
    h, i, penalty = X.to(params[0].dtype), 0, 0
    for layer in range(1, layers + 1):
        w, b = params[i], params[i + 1]
        i += 2
        penalty = penalty + torch.sum(torch.square(w))
        h = affine(h, w, b)
        if layer == layers:
            break
        if normalization == "batchnorm":
            g, be = params[i], params[i + 1]
            i += 2
            h = (batchnorm(h, g, be, eps=eps) if y is not None else
                 _batchnorm_running(h, g, be, extra[f"running_mean{layer}"], extra[f"running_var{layer}"], eps=eps))
        elif normalization == "layernorm":
            h = layernorm(h, params[i], params[i + 1], eps=eps)
            i += 2
        h = relu(h)
        if y is not None and f"mask{layer}" in extra:
            h = dropout(h, p=1.0, mode="train", mask=extra[f"mask{layer}"])
    if y is None:
        return _scores_only(h, params)
    return softmax_cross_entropy(h, y=y) + reg_scale * reg * penalty


def conv_net(W1, b1, W2, b2, W3, b3, *, X, pad, reg=0.0, reg_scale=1.0, y=None):
    # conv (stride 1) - relu - 2x2 max pool - affine - relu - affine - softmax
    h = max_pool2d(relu(conv2d(X.to(W1.dtype), W1, b1, stride=1, pad=pad)), pool_height=2, pool_width=2, stride=2)
    scores = affine(relu(affine(h, W2, b2)), W3, b3)
    if y is None:
        return _scores_only(scores, (W1,))
    penalty = torch.sum(torch.square(W1)) + torch.sum(torch.square(W2)) + torch.sum(torch.square(W3))
    return softmax_cross_entropy(scores, y=y) + reg_scale * reg * penalty


def captioning_rnn(W_proj, b_proj, W_embed, Wx, Wh, b, W_vocab, b_vocab, *, features, captions, null, cell):
    # h0 = features W_proj + b_proj; words in = captions[:, :-1], words out = captions[:, 1:], the
    # <NULL> ones masked out of the loss
    h0 = affine(features.to(W_proj.dtype), W_proj, b_proj)
    words_in, words_out = captions[:, :-1], captions[:, 1:]
    x = embedding(W_embed, idx=words_in)
    h = (rnn if cell == "rnn" else lstm)(x, h0, Wx, Wh, b)
    return temporal_softmax_loss(temporal_affine(h, W_vocab, b_vocab), y=words_out, mask=words_out != null)
