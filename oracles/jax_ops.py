"""Catalogue forwards written with JAX's built-in ops, so jax.vjp uses JAX's own derivatives.

Paired with the reference by name (docs/op_contract.md). Imported only by the JAX oracle; every
function is jit-compiled there with its non-array params static, so nothing here branches on an
array's value. Conventions at kinks and ties are noted per op, with the row of
../shared/CONVENTIONS.md. Float array params (``y`` of mse, ``mask``) are cast to the input's
dtype, so the output keeps it. Matmul/conv precision is left to the caller
(``jax.default_matmul_precision``), so the oracle decides about TF32 in one place.
"""
import jax
import jax.numpy as jnp
from jax import lax


# --- scalar chain-rule gates ------------------------------------------------------------------

def add_gate(x, y):
    return jnp.add(x, y)


def multiply_gate(x, y):
    return jnp.multiply(x, y)


def max_gate(x, y):
    # tie x == y: ½ to each side (CONVENTIONS row 2; lax.max's JVP uses _balanced_eq)
    return lax.max(x, y)


def sigmoid_neuron(w, x):
    return jax.nn.sigmoid(jnp.dot(x, w[:2]) + w[2])


def chain_rule_example(x, y, z):
    return jnp.multiply(jnp.add(x, y), z)


# --- linear layers ----------------------------------------------------------------------------

def affine(x, w, b):
    return jnp.dot(x.reshape(x.shape[0], -1), w) + b


def linear_column(w, x, b):
    return jnp.dot(w, x) + b  # b (M, 1) broadcasts over the N columns


def temporal_affine(x, w, b):
    return jnp.dot(x, w) + b  # contracts x's last axis with w's first


# --- activations ------------------------------------------------------------------------------

def relu(x):
    return jax.nn.relu(x)  # gradient 0 at 0 (jnp.maximum(x, 0) would give 0.5; CONVENTIONS row 1)


def sigmoid(x):
    return jax.nn.sigmoid(x)  # lax.logistic


def tanh(x):
    return jnp.tanh(x)


def softmax(x):
    return jax.nn.softmax(x, axis=1)


def log_softmax(x):
    return jax.nn.log_softmax(x, axis=1)


# --- losses and regularisers ------------------------------------------------------------------

def _nll(logp, y):
    """-logp[..., y] for integer labels y of logp's leading shape."""
    return -jnp.take_along_axis(logp, y[..., None].astype(jnp.int32), axis=-1)[..., 0]


def softmax_cross_entropy(x, *, y):
    logp = jax.nn.log_softmax(x, axis=1)
    return -jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), axis=1).mean()


def mse(a, *, y):
    return 0.5 * jnp.sum(jnp.square(a - y.astype(a.dtype)))


def svm_hinge(x, *, y):
    # Hinge at exactly 0 (x_j - x_y + 1 == 0): jax.nn.relu gives gradient 0 there, like torch's
    # multi_margin_loss (`z > 0`). The j == y_n term is dropped with a where, not subtracted.
    N, C = x.shape
    y = y.astype(jnp.int32)
    correct = jnp.take_along_axis(x, y[:, None], axis=1)
    hinge = jax.nn.relu(x - correct + 1.0)
    is_label = jnp.arange(C)[None, :] == y[:, None]
    return jnp.sum(jnp.where(is_label, jnp.zeros_like(hinge), hinge)) / N


def l2_regularization(w, *, reg):
    return reg * jnp.sum(jnp.square(w))


def dropout(x, *, p, mode, mask):
    # The mask is injected (framework RNGs differ, CONVENTIONS row 21); p is the KEEP probability.
    if mode == "train":
        return x * mask.astype(x.dtype) / p
    if mode == "test":
        return x
    raise ValueError(f"dropout: mode must be 'train' or 'test', got {mode!r}")


def temporal_softmax_loss(x, *, y, mask):
    # where (not a 0/1 product) so a masked-out step contributes exactly nothing.
    nll = _nll(jax.nn.log_softmax(x, axis=-1), y)
    return jnp.sum(jnp.where(mask.astype(bool), nll, jnp.zeros_like(nll))) / x.shape[0]


# --- convolution and pooling ------------------------------------------------------------------

def conv2d(x, w, b, *, stride, pad):
    out = lax.conv_general_dilated(
        x, w, window_strides=(stride, stride), padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return out + b[None, :, None, None]


def max_pool2d(x, *, pool_height, pool_width, stride):
    # -inf init + lax.max makes this reduce_window_max; its VJP is select_and_scatter_add with
    # `ge`: ties inside a window send the whole gradient to ONE element, the first in row-major
    # order; overlapping windows pick independently. CONVENTIONS row 7.
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, pool_height, pool_width),
                             (1, 1, stride, stride), "VALID")


def avg_pool2d(x, *, pool_height, pool_width, stride):
    # No padding: the divisor is always the full window (CONVENTIONS row 20 does not arise).
    total = lax.reduce_window(x, 0.0, lax.add, (1, 1, pool_height, pool_width),
                              (1, 1, stride, stride), "VALID")
    return total / (pool_height * pool_width)


# --- recurrent networks -----------------------------------------------------------------------

def rnn_step(x, prev_h, wx, wh, b):
    return jnp.tanh(jnp.dot(x, wx) + jnp.dot(prev_h, wh) + b)


def rnn(x, h0, wx, wh, b):
    def step(h, x_t):
        h = rnn_step(x_t, h, wx, wh, b)
        return h, h

    _, hs = lax.scan(step, h0, jnp.swapaxes(x, 0, 1))  # scan over T
    return jnp.swapaxes(hs, 0, 1)


def rnn_softmax_sequence(x, h0, wx, wh, b, v, c, *, y):
    scores = jnp.dot(rnn(x, h0, wx, wh, b), v) + c
    return jnp.sum(_nll(jax.nn.log_softmax(scores, axis=-1), y)) / x.shape[0]


def lstm_step(x, prev_h, prev_c, wx, wh, b):
    a = jnp.dot(x, wx) + jnp.dot(prev_h, wh) + b
    ai, af, ao, ag = jnp.split(a, 4, axis=1)  # cs231n gate order i, f, o, g
    next_c = jax.nn.sigmoid(af) * prev_c + jax.nn.sigmoid(ai) * jnp.tanh(ag)
    next_h = jax.nn.sigmoid(ao) * jnp.tanh(next_c)
    return next_h, next_c


def lstm(x, h0, wx, wh, b):
    def step(carry, x_t):
        h, c = lstm_step(x_t, *carry, wx, wh, b)
        return (h, c), h

    _, hs = lax.scan(step, (h0, jnp.zeros_like(h0)), jnp.swapaxes(x, 0, 1))  # c0 = 0
    return jnp.swapaxes(hs, 0, 1)


# --- normalisation and embedding --------------------------------------------------------------

def _normalize(x, gamma, beta, eps, axis):
    mean = jnp.mean(x, axis=axis, keepdims=True)
    var = jnp.var(x, axis=axis, keepdims=True)  # two-pass, biased (ddof=0); CONVENTIONS row 13
    return (x - mean) * lax.rsqrt(var + eps) * gamma + beta


def batchnorm(x, gamma, beta, *, eps):
    return _normalize(x, gamma, beta, eps, axis=0)  # train mode: batch statistics


def layernorm(x, gamma, beta, *, eps):
    return _normalize(x, gamma, beta, eps, axis=1)


def embedding(w, *, idx):
    return jnp.take(w, idx, axis=0)  # VJP is a scatter-add: repeated indices accumulate


# --- small networks from the notes ------------------------------------------------------------

def mlp_sigmoid_mse(x, w1, b1, w2, b2, *, y):
    a1 = jax.nn.sigmoid(jnp.dot(x, w1) + b1)
    a2 = jax.nn.sigmoid(jnp.dot(a1, w2) + b2)
    return 0.5 * jnp.sum(jnp.square(a2 - y.astype(a2.dtype)))


def two_layer_net(x, w1, b1, w2, b2, *, y, reg):
    hidden = jax.nn.relu(jnp.dot(x, w1) + b1)  # gradient 0 at 0 (CONVENTIONS row 1)
    loss = jnp.mean(_nll(jax.nn.log_softmax(jnp.dot(hidden, w2) + b2, axis=1), y))
    return loss + reg * (jnp.sum(jnp.square(w1)) + jnp.sum(jnp.square(w2)))


# --- spatial normalisation, and batchnorm's running statistics --------------------------------
# JAX has no normalisation layers of its own (jax.nn has standardize only): these follow flax's
# BatchNorm and GroupNorm (statistics over the reduced axes, (x - mean) * rsqrt(var + eps), then
# scale and bias), with the two-pass jnp.var, i.e. flax's use_fast_variance=False: flax's default
# E[x²] - E[x]² cancels on near-constant inputs (CONVENTIONS row 13), and these are judges.

def spatial_batchnorm(x, gamma, beta, *, eps):
    axes = (0, 2, 3)  # flax BatchNorm(axis=1): every axis but the channel's
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.var(x, axis=axes, keepdims=True)
    return (x - mean) * lax.rsqrt(var + eps) * gamma.reshape(1, -1, 1, 1) + beta.reshape(1, -1, 1, 1)


def spatial_groupnorm(x, gamma, beta, *, G, eps):
    n, c, h, w = x.shape
    xg = x.reshape(n, G, c // G, h, w)  # flax GroupNorm: channels split into G consecutive groups
    mean = jnp.mean(xg, axis=(2, 3, 4), keepdims=True)
    var = jnp.var(xg, axis=(2, 3, 4), keepdims=True)
    return ((xg - mean) * lax.rsqrt(var + eps)).reshape(x.shape) * gamma + beta


def batchnorm_running(x, gamma, beta, *, running_mean, running_var, momentum, eps):
    # flax BatchNorm: use_running_average=True normalises with the running statistics; in training it
    # updates them as momentum * old + (1 - momentum) * batch statistic (biased variance): cs231n's convention
    out = (x - running_mean) * lax.rsqrt(running_var + eps) * gamma + beta
    new_mean = momentum * running_mean + (1 - momentum) * jnp.mean(x, axis=0)
    new_var = momentum * running_var + (1 - momentum) * jnp.var(x, axis=0)
    return out, new_mean, new_var


# --- linear classifiers of assignment 1: s = X W, W differentiated -----------------------------

def linear_svm(W, *, X, y, reg, reg_scale=1.0):
    return svm_hinge(jnp.dot(X.astype(W.dtype), W), y=y) + reg_scale * reg * jnp.sum(jnp.square(W))


def linear_softmax(W, *, X, y, reg, reg_scale=1.0):
    return softmax_cross_entropy(jnp.dot(X.astype(W.dtype), W), y=y) + reg_scale * reg * jnp.sum(jnp.square(W))


# --- the assignments' model classes, built from the ops above (audit only: gradaudit/models.py) ---
# Params come positionally in the order of properties/catalogue/_models.py; the data, labels,
# dropout masks and running statistics are keyword params. Without labels a model returns its
# test-mode scores with a zero gradient (the class has no backward for them: only the values count).

def _batchnorm_running(x, gamma, beta, running_mean, running_var, *, eps):
    return (x - running_mean.astype(x.dtype)) * lax.rsqrt(running_var.astype(x.dtype) + eps) * gamma + beta


def fc_net(*params, X, layers, normalization=None, reg=0.0, reg_scale=1.0, eps=1e-5, y=None, **extra):
    # {affine - [batch/layer norm] - relu - [dropout]} x (layers - 1) - affine - softmax; W1, b1,
    # [gamma1, beta1,] W2, ... The dropout masks come already scaled (the user's own, read back).
    h, i, penalty = X.astype(params[0].dtype), 0, 0
    for layer in range(1, layers + 1):
        w, b = params[i], params[i + 1]
        i += 2
        penalty = penalty + jnp.sum(jnp.square(w))
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
        return lax.stop_gradient(h)
    return softmax_cross_entropy(h, y=y) + reg_scale * reg * penalty


def conv_net(W1, b1, W2, b2, W3, b3, *, X, pad, reg=0.0, reg_scale=1.0, y=None):
    # conv (stride 1) - relu - 2x2 max pool - affine - relu - affine - softmax
    h = max_pool2d(relu(conv2d(X.astype(W1.dtype), W1, b1, stride=1, pad=pad)), pool_height=2, pool_width=2, stride=2)
    scores = affine(relu(affine(h, W2, b2)), W3, b3)
    if y is None:
        return lax.stop_gradient(scores)
    penalty = jnp.sum(jnp.square(W1)) + jnp.sum(jnp.square(W2)) + jnp.sum(jnp.square(W3))
    return softmax_cross_entropy(scores, y=y) + reg_scale * reg * penalty


def captioning_rnn(W_proj, b_proj, W_embed, Wx, Wh, b, W_vocab, b_vocab, *, features, captions, null, cell):
    # h0 = features W_proj + b_proj; words in = captions[:, :-1], words out = captions[:, 1:], the
    # <NULL> ones masked out of the loss
    h0 = affine(features.astype(W_proj.dtype), W_proj, b_proj)
    words_in, words_out = captions[:, :-1], captions[:, 1:]
    x = embedding(W_embed, idx=words_in)
    h = (rnn if cell == "rnn" else lstm)(x, h0, Wx, Wh, b)
    return temporal_softmax_loss(temporal_affine(h, W_vocab, b_vocab), y=words_out, mask=words_out != null)
