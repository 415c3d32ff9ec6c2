"""Seed 003 (../../../shared/seeds/003_731a6e23319abfde.txt): op前传和反传 — softmax ce loss, the
linear layer (with and without bias), dropout, sigmoid.

Transcribed AS WRITTEN. Verdicts and reasons: README.md in this folder.
"""
import numpy as np

import gradaudit
from gradaudit import mask, onehot


def _xp_log_softmax(xp, z):
    s = z - xp.max(z, axis=-1, keepdims=True)
    return s - xp.log(xp.sum(xp.exp(s), axis=-1, keepdims=True))


# ==== § softmax ce loss ==========================================================================

@gradaudit.derivation(source="seed 003 § softmax ce loss (反传, 标量形式)",
                      formula="∂loss/∂z_i = softmax(z_i) (i ≠ y),  ∂loss/∂z_y = −1 + softmax(z_y)")
def softmax_ce(xp, z: (1, "m"), *, y: onehot(1, classes="m")):
    return -xp.sum(_xp_log_softmax(xp, z) * y)


@softmax_ce.backward
def softmax_ce_backward(dloss, z, *, y):
    e = np.exp(z - z.max())
    softmax = e / e.sum()
    dz = softmax.copy()  # i ≠ y
    dz[y == 1] = -1 + softmax[y == 1]  # i = y
    return dz * dloss


# ==== § 线性层（全连接层） ========================================================================

@gradaudit.derivation(source="seed 003 § 线性层 (反传)", formula="Y = XW:  dX = dY Wᵀ,  dW = Xᵀ dY")
def linear(xp, X: ("N", "D"), W: ("D", "C")):
    return X @ W


@linear.backward
def linear_backward(dY, X, W):
    return dY @ W.T, X.T @ dY


@gradaudit.derivation(source="seed 003 § 线性层 (加入bias的情况)",
                      formula="Y = XW + b, b ∈ R^{N×1} (y_ij = … + b_i):  db = dY I, I ∈ R^{C×1} all ones")
def linear_row_bias(xp, X: ("N", "D"), W: ("D", "C"), b: ("N", 1)):
    return X @ W + b


@linear_row_bias.backward
def linear_row_bias_backward(dY, X, W, b):
    I = np.ones((dY.shape[1], 1))  # noqa: E741  (the note's name)
    return dY @ W.T, X.T @ dY, dY @ I


@gradaudit.derivation(source="seed 003 § 线性层 (加入bias的情况, applied to a layer bias b ∈ R^C)",
                      formula="Y = XW + b, b ∈ R^{C} (one bias per output, broadcast over the batch):  db = dY I")
def linear_layer_bias(xp, X: ("N", "D"), W: ("D", "C"), b: ("C",)):
    return X @ W + b


@linear_layer_bias.backward
def linear_layer_bias_backward(dY, X, W, b):
    I = np.ones((dY.shape[1], 1))  # noqa: E741
    return dY @ W.T, X.T @ dY, dY @ I


# ==== § dropout ==================================================================================

@gradaudit.derivation(source="seed 003 § dropout (训练过程中直接除p)",
                      formula="train: out = x ⊙ m / p (inverted dropout);  dx = dout ⊙ m / p")
def dropout(xp, x: ("N", "D"), *, m: mask("N", "D", p=0.5), p: gradaudit.choice(0.5, 0.8)):
    return x * m / p


@dropout.backward
def dropout_backward(dout, x, *, m, p):
    return dout * m / p


# ==== § 激活函数: sigmoid ========================================================================

def _stable_sigmoid(xp, s):
    # each branch only ever sees the sign it is selected for, so neither overflows, and the branch
    # that is not selected contributes an exact 0 to the gradient, not 0 * inf
    pos = s >= 0
    s_pos, s_neg = xp.where(pos, s, 0 * s), xp.where(pos, 0 * s, s)
    return xp.where(pos, 1 / (1 + xp.exp(-s_pos)), xp.exp(s_neg) / (1 + xp.exp(s_neg)))


@gradaudit.derivation(source="seed 003 § sigmoid (反传)", regimes=("typical", "large", "overflow"),
                      formula="ds = dy e^{−s} / (1 + e^{−s})²")
def sigmoid(xp, s: ("N", "D")):
    return _stable_sigmoid(xp, s)


@sigmoid.backward
def sigmoid_backward(dy, s):
    with np.errstate(over="ignore", invalid="ignore"):
        return dy * np.exp(-s) / (1 + np.exp(-s)) ** 2


@gradaudit.derivation(source="seed 003 § sigmoid (导数的另一种写法)", regimes=("typical", "large", "overflow"),
                      formula="e^{−s}/(1 + e^{−s})² = 1/(e^s + 2 + e^{−s})")
def sigmoid_symmetric(xp, s: ("N", "D")):
    return _stable_sigmoid(xp, s)


@sigmoid_symmetric.backward
def sigmoid_symmetric_backward(dy, s):
    with np.errstate(over="ignore"):
        return dy / (np.exp(s) + 2 + np.exp(-s))
