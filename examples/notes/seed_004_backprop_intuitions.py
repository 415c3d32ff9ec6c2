"""Seed 004 (../../../shared/seeds/004_7f532b2ed25e8357.txt): Backpropagation, Intuitions (cs231n
optimization-2) — patterns in backward flow, vectorized gradients, and Assignment 1's two_layer_net.

Transcribed AS WRITTEN (the two-layer net's code is the note's, run under `xp`). Verdicts and
reasons: README.md in this folder.
"""
import numpy as np

import gradaudit
from gradaudit import choice, labels


# ==== § Patterns in backward flow ================================================================

@gradaudit.derivation(source="seed 004 § Patterns in backward flow: add gate",
                      formula="up_diff 不做任何改变均匀的传向两个分支")
def add_gate(xp, x: ("S",), y: ("S",)):
    return x + y


@add_gate.backward
def add_gate_backward(up_diff, x, y):
    return up_diff, up_diff


@gradaudit.derivation(source="seed 004 § Patterns in backward flow: max gate",
                      formula="up_diff 传向输入值大的一个分支, 另一个分支为 0", like="max_gate", regimes=("typical", "kinks"))
def max_gate(xp, x: ("S",), y: ("S",)):
    return xp.maximum(x, y)


@max_gate.backward
def max_gate_backward(up_diff, x, y):
    bigger = x > y  # at a tie (x == y) the note does not say; this gives it all to y
    return up_diff * bigger, up_diff * ~bigger


@gradaudit.derivation(source="seed 004 § Patterns in backward flow: multiply gate",
                      formula="up_diff 与输入值相乘后传向另外一个分支 (switch)")
def multiply_gate(xp, x: ("S",), y: ("S",)):
    return x * y


@multiply_gate.backward
def multiply_gate_backward(up_diff, x, y):
    return up_diff * y, up_diff * x


@gradaudit.derivation(source="seed 004 § Patterns in backward flow: sigmoid gate",
                      formula="dσ(x)/dx = (1 − σ(x)) σ(x)")
def sigmoid_gate(xp, x: ("S",)):
    return 1 / (1 + xp.exp(-x))


@sigmoid_gate.backward
def sigmoid_gate_backward(up_diff, x, *, out):
    return up_diff * (1 - out) * out


# ==== § Gradients for vectorized operations ======================================================

@gradaudit.derivation(source="seed 004 § Gradients for vectorized operations",
                      formula="Score = X.dot(W):  dW = X.T.dot(dScore),  dX = dScore.dot(W.T)")
def scores(xp, X: ("N", "D"), W: ("D", "C")):
    return X @ W


@scores.backward
def scores_backward(dScore, X, W):
    return dScore.dot(W.T), X.T.dot(dScore)


# ==== § Assignment 1: two_layer_net ==============================================================
# Argument names as the catalogue's two_layer_net, so `like=` lends its kink classification.

@gradaudit.derivation(source="seed 004 § Assignment 1: two_layer_net", like="two_layer_net", regimes=("typical", "kinks"),
                      formula="Dscores = softmax − 1_y, /N;  dW2 = relu_outᵀ Dscores + 2 reg W2;  db2 = Σ Dscores;  "
                              "Drelu_out = Dscores W2ᵀ;  Dlayer1_out = Drelu_out ⊙ (layer1_out > 0);  "
                              "dW1, db1 likewise")
def two_layer_net(xp, x: ("N", "D"), w1: ("D", "H"), b1: ("H",), w2: ("H", "C"), b2: ("C",), *,
                  y: labels("N", classes="C"), reg: choice(0.05, 0.0)):
    X, W1, W2 = x, w1, w2
    N = X.shape[0]
    layer1_out = X @ W1 + b1
    relu_out = xp.maximum(layer1_out, xp.zeros_like(layer1_out))
    scores = relu_out @ W2 + b2
    stable_scores = scores - xp.max(scores, axis=1, keepdims=True)
    onehot = xp.astype(y[:, None] == xp.arange(scores.shape[1])[None, :], scores.dtype)
    correct_score = xp.sum(stable_scores * onehot, axis=1)
    loss = -xp.sum(xp.log(xp.exp(correct_score) / xp.sum(xp.exp(stable_scores), axis=1)))
    return loss / N + reg * xp.sum(W1 * W1) + reg * xp.sum(W2 * W2)


@two_layer_net.backward
def two_layer_net_backward(dloss, x, w1, b1, w2, b2, *, y, reg):
    X, W1, W2, N = x, w1, w2, x.shape[0]
    layer1_out = X.dot(W1) + b1
    relu_out = np.maximum(0, layer1_out)
    scores = relu_out.dot(W2) + b2
    stable_scores = scores - np.max(scores, axis=1, keepdims=True)
    # the note's lines, in order
    Dscores = np.exp(stable_scores) / np.sum(np.exp(stable_scores), axis=1, keepdims=True)
    Dscores[np.arange(N), y] -= 1
    Dscores = Dscores / N
    grads = {}
    grads['W2'] = relu_out.T.dot(Dscores) + 2 * reg * W2
    grads['b2'] = np.sum(Dscores, axis=0)
    Drelu_out = Dscores.dot(W2.T)
    Dlayer1_out = Drelu_out * (layer1_out > 0)
    grads['W1'] = X.T.dot(Dlayer1_out) + 2 * reg * W1  # "以此类推"
    grads['b1'] = np.sum(Dlayer1_out, axis=0)
    dX = Dlayer1_out.dot(W1.T)
    return tuple(dloss * g for g in (dX, grads['W1'], grads['b1'], grads['W2'], grads['b2']))


@gradaudit.derivation(source="seed 004 § ReLU梯度的计算", like="relu", regimes=("typical", "kinks"),
                      formula="Dlayer1_out = Drelu_out * (layer1_out > 0)")
def relu(xp, x: ("N", "H")):
    return xp.maximum(x, xp.zeros_like(x))


@relu.backward
def relu_backward(Drelu_out, x):
    layer1_out = x
    return Drelu_out * (layer1_out > 0)
