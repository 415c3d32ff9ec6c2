"""Seed 001 (../../../shared/seeds/001_3272566d33a3a268.txt): back prop, MLP, CNN (pooling and
convolution layers), RNN. Column vectors (z = w a + b) as in the note; one sample.

Transcribed AS WRITTEN; where a formula is ambiguous the reading is stated next to it. Verdicts and
reasons: README.md in this folder.
"""
import numpy as np

import gradaudit
from gradaudit import const, onehot


def _sig(xp, u):
    return 1 / (1 + xp.exp(-u))


def _np_sig(u):
    return 1 / (1 + np.exp(-u))


def _np_softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _xp_log_softmax(xp, z, axis=-1):
    s = z - xp.max(z, axis=axis, keepdims=True)
    return s - xp.log(xp.sum(xp.exp(s), axis=axis, keepdims=True))


# ==== § back prop ================================================================================
# C = ½‖y − a^L‖², a^l = σ(z^l), z^l = w^l a^{l−1} + b^l  (column vectors)

@gradaudit.derivation(source="seed 001 § back prop",
                      formula="δ^L = ∇_a C ⊙ σ'(z^L),  δ^l = ((w^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l),  "
                              "∂C/∂b^l_j = δ^l_j,  ∂C/∂w^l_jk = a^{l−1}_k δ^l_j")
def back_prop(xp, w1: ("H", "D"), b1: ("H", 1), w2: ("K", "H"), b2: ("K", 1), *,
              x: const("D", 1), y: const("K", 1)):
    a1 = _sig(xp, w1 @ x + b1)
    r = y - _sig(xp, w2 @ a1 + b2)
    return xp.sum(r * r) / 2


@back_prop.backward
def back_prop_backward(dC, w1, b1, w2, b2, *, x, y):
    a1 = _np_sig(w1 @ x + b1)
    a2 = _np_sig(w2 @ a1 + b2)
    delta2 = (a2 - y) * a2 * (1 - a2) * dC  # ∇_a C ⊙ σ'(z^L)
    delta1 = (w2.T @ delta2) * a1 * (1 - a1)  # ((w^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l)
    return delta1 @ x.T, delta1, delta2 @ a1.T, delta2  # ∂C/∂w_jk = a_k δ_j, ∂C/∂b = δ


# ==== § MLP ======================================================================================

@gradaudit.derivation(source="seed 001 § MLP",
                      formula="F = f3(f2(f1(xW1)W2)W3):  ∂F/∂W1 = x * f1' * W2 * f2' * W3 * f3'")
def mlp_chain(xp, W1: ("D", "H"), *, x: const(1, "D"), W2: const("H", "G"), W3: const("G", 1)):
    return xp.sum(xp.tanh(xp.tanh(xp.tanh(x @ W1) @ W2) @ W3))


@mlp_chain.backward
def mlp_chain_backward(dF, W1, *, x, W2, W3):
    # read as the product it abbreviates, in backward order with the transposes it leaves out:
    # ∂F/∂W1 = xᵀ [((f3' W3ᵀ) ⊙ f2') W2ᵀ ⊙ f1']
    u1 = np.tanh(x @ W1)
    u2 = np.tanh(u1 @ W2)
    u3 = np.tanh(u2 @ W3)
    f1, f2, f3 = 1 - u1 ** 2, 1 - u2 ** 2, 1 - u3 ** 2
    return x.T @ ((((f3 * dF) @ W3.T) * f2) @ W2.T * f1)


# ==== § CNN: 池化层 ===============================================================================
# a = σ(z) on (C, H, 2, W, 2): each pooling window is one (h, ·, w, ·) slice of the 2 x 2 axes

@gradaudit.derivation(source="seed 001 § CNN 池化层 (max pooling)",
                      formula="max pooling: 梯度直接传给前一层最大的那个点;  δ^{l−1} = upsample(δ^l) ⊙ σ'(z^{l−1})")
def max_pool_upsample(xp, z: ("C", "H", 2, "W", 2)):
    return xp.max(_sig(xp, z), axis=(2, 4))


@max_pool_upsample.backward
def max_pool_upsample_backward(delta, z):
    a = _np_sig(z)
    win = a.transpose(0, 1, 3, 2, 4).reshape(*delta.shape, 4)
    first = (win.argmax(axis=-1)[..., None] == np.arange(4))  # the maximum of each window
    up = (first * delta[..., None]).reshape(*delta.shape, 2, 2).transpose(0, 1, 3, 2, 4)  # upsample(δ^l)
    return up * a * (1 - a)


@gradaudit.derivation(source="seed 001 § CNN 池化层 (mean pooling)",
                      formula="mean pooling: 梯度等分为 n 份分配给前一层;  δ^{l−1} = upsample(δ^l) ⊙ σ'(z^{l−1})")
def mean_pool_upsample(xp, z: ("C", "H", 2, "W", 2)):
    return xp.mean(_sig(xp, z), axis=(2, 4))


@mean_pool_upsample.backward
def mean_pool_upsample_backward(delta, z):
    a = _np_sig(z)
    up = np.broadcast_to(delta[:, :, None, :, None] / 4, z.shape)  # split in n = 4 equal parts
    return up * a * (1 - a)


# ==== § CNN: 卷积层 ===============================================================================
# z^l = a^{l−1} * W^l + b^l, a^{l−1} = σ(z^{l−1}); `*` is the convolution of the forward pass, i.e.
# the deep-learning one (a cross-correlation), padded as far as the output size requires.

def _corr(img, ker, pad=0):
    """img * ker: 2-D cross-correlation with `pad` zeros around img."""
    img = np.pad(img, pad)
    kh, kw = ker.shape
    out = np.zeros((img.shape[0] - kh + 1, img.shape[1] - kw + 1), dtype=img.dtype)
    for u in range(kh):
        for v in range(kw):
            out += ker[u, v] * img[u:u + out.shape[0], v:v + out.shape[1]]
    return out


def _conv_xp(xp, a, W, b):
    kh, kw = W.shape
    ho, wo = a.shape[0] - kh + 1, a.shape[1] - kw + 1
    z = b
    for u in range(kh):
        for v in range(kw):
            z = z + W[u, v] * a[u:u + ho, v:v + wo]
    return z


_CONV = {"KH": (1, 2), "KW": (2, 1, 3), "H": (3, 4, 5), "W": (4, 3, 5)}


@gradaudit.derivation(source="seed 001 § CNN 卷积层 (已知 δ^l 推导 δ^{l−1})", sizes=_CONV,
                      formula="δ^{l−1} = δ^l * rot180(W^l) ⊙ σ'(z^{l−1})")
def conv_delta_prev(xp, z_prev: ("H", "W"), *, W: const("KH", "KW"), b: const()):
    return _conv_xp(xp, _sig(xp, z_prev), W, b)


@conv_delta_prev.backward
def conv_delta_prev_backward(delta, z_prev, *, W, b):
    a = _np_sig(z_prev)
    kh, kw = W.shape
    full = np.pad(delta, ((kh - 1, kh - 1), (kw - 1, kw - 1)))  # δ padded to the "full" size
    return _corr(full, np.rot90(W, 2)) * a * (1 - a)


@gradaudit.derivation(source="seed 001 § CNN 卷积层 (W 的梯度)", sizes=_CONV,
                      formula="∂C/∂W^l = δ^l * rot180(a^{l−1})")
def conv_dW(xp, W: ("KH", "KW"), *, a_prev: const("H", "W"), b: const()):
    return _conv_xp(xp, a_prev, W, b)


@conv_dW.backward
def conv_dW_backward(delta, W, *, a_prev, b):
    kh, kw = W.shape
    # δ * rot180(a): the kernel rot180(a) is larger than δ, so δ is padded until the result has the
    # kernel's size (pad = size(a) − size(δ) = kernel size − 1)
    return _corr(np.pad(delta, ((kh - 1, kh - 1), (kw - 1, kw - 1))), np.rot90(a_prev, 2))


@gradaudit.derivation(source="seed 001 § CNN 卷积层 (b 的梯度)", sizes=_CONV,
                      formula="∂C/∂b^l = Σ_{u,v} δ^l_{u,v}")
def conv_db(xp, b: (), *, a_prev: const("H", "W"), W: const("KH", "KW")):
    return _conv_xp(xp, a_prev, W, b)


@conv_db.backward
def conv_db_backward(delta, b, *, a_prev, W):
    return delta.sum()


# ==== § RNN ======================================================================================
# h^t = σ(U x^t + W h^{t−1} + b) (σ = tanh), o^t = V h^t + c, ŷ^t = σ(o^t) (σ = softmax), L = Σ_t L^t (CE)
# Sequences are stored as rows: x[t] is the column vector x^t.

_SEQ = {"T": (1, 2, 3)}


def _rnn_np(x, h0, U, W, b):
    hs, h = [h0], h0
    for t in range(x.shape[0]):
        h = np.tanh(U @ x[t] + W @ h + b)
        hs.append(h)
    return hs


def _rnn_loss_xp(xp, x, h0, U, W, b, V, c, y):
    h, loss = h0, 0.0
    for t in range(x.shape[0]):
        h = xp.tanh(U @ x[t] + W @ h + b)
        loss = loss - xp.sum(_xp_log_softmax(xp, V @ h + c) * y[t])
    return loss


@gradaudit.derivation(source="seed 001 § RNN (c 的梯度)", sizes=_SEQ,
                      formula="∂L/∂c = Σ_t ∂L^t/∂o^t ∂o^t/∂c = Σ_t (∇L^t) σ'(o^t)")
def rnn_dc(xp, c: ("C",), *, o_wo_c: const("T", "C"), y: onehot("T", classes="C")):
    return -xp.sum(_xp_log_softmax(xp, o_wo_c + c) * y)


@rnn_dc.backward
def rnn_dc_backward(dL, c, *, o_wo_c, y):
    # ∇L^t = ∂L^t/∂ŷ^t = −y^t/ŷ^t (cross-entropy), σ'(o^t) elementwise = ŷ^t ⊙ (1 − ŷ^t), as in § back prop
    yhat = _np_softmax(o_wo_c + c)
    return (-y / yhat * (yhat * (1 - yhat))).sum(axis=0) * dL


@gradaudit.derivation(source="seed 001 § RNN (V 的梯度)", sizes=_SEQ,
                      formula="∂L/∂V = Σ_t ∂L^t/∂o^t ∂o^t/∂V = Σ_t (∇L^t)(h^t)ᵀ")
def rnn_dV(xp, V: ("C", "H"), *, h: const("T", "H"), c: const("C"), y: onehot("T", classes="C")):
    return -xp.sum(_xp_log_softmax(xp, h @ V.T + c) * y)


@rnn_dV.backward
def rnn_dV_backward(dL, V, *, h, c, y):
    # the same ∇L^t as in ∂L/∂c: ∂L^t/∂ŷ^t = −y^t/ŷ^t
    yhat = _np_softmax(h @ V.T + c)
    return (-y / yhat).T @ h * dL


@gradaudit.derivation(source="seed 001 § RNN (V 的梯度, read with ∇L^t = ∂L^t/∂o^t)", sizes=_SEQ,
                      formula="∂L/∂V = Σ_t (∇L^t)(h^t)ᵀ,  ∇L^t = ∂L^t/∂o^t = ŷ^t − y^t")
def rnn_dV_do(xp, V: ("C", "H"), *, h: const("T", "H"), c: const("C"), y: onehot("T", classes="C")):
    return -xp.sum(_xp_log_softmax(xp, h @ V.T + c) * y)


@rnn_dV_do.backward
def rnn_dV_do_backward(dL, V, *, h, c, y):
    return (_np_softmax(h @ V.T + c) - y).T @ h * dL


@gradaudit.derivation(source="seed 001 § RNN (δ^t 与 U, W, b 的梯度)", sizes=_SEQ,
                      formula="δ^t = ∂L/∂o^t ∂o^t/∂h^t + ∂L/∂h^{t+1} ∂h^{t+1}/∂h^t,  δ^T = ∂L/∂o^T ∂o^T/∂h^T,  "
                              "∂L/∂W = Σ_t ∂L/∂h^t ∂h^t/∂W  (likewise U, b)")
def rnn_bptt(xp, U: ("H", "D"), W: ("H", "H"), b: ("H",), *, x: const("T", "D"), h0: const("H", scale=0.5),
             V: const("C", "H"), c: const("C"), y: onehot("T", classes="C")):
    return _rnn_loss_xp(xp, x, h0, U * 0.5, W * 0.5, b * 0.5, V, c, y)


@rnn_bptt.backward
def rnn_bptt_backward(dL, U, W, b, *, x, h0, V, c, y):
    U_, W_, b_ = U * 0.5, W * 0.5, b * 0.5
    hs = _rnn_np(x, h0, U_, W_, b_)
    T = x.shape[0]
    dU, dW, db = np.zeros_like(U), np.zeros_like(W), np.zeros_like(b)
    from_next = np.zeros_like(h0)  # ∂L/∂h^{t+1} ∂h^{t+1}/∂h^t
    for t in range(T, 0, -1):
        delta = V.T @ (_np_softmax(V @ hs[t] + c) - y[t - 1]) * dL + from_next  # δ^t
        g = delta * (1 - hs[t] ** 2)  # through the tanh: the local ∂h^t/∂(Ux^t + Wh^{t−1} + b)
        dU += np.outer(g, x[t - 1]) * 0.5
        dW += np.outer(g, hs[t - 1]) * 0.5
        db += g * 0.5
        from_next = W_.T @ g
    return dU, dW, db
