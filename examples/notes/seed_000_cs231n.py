"""Seed 000 (../../../shared/seeds/000_2d8d11f8f22c7193.txt): cs231n notes — matrix-calculus tips,
DNN, Softmax, RNN, LSTM, and "1、KNN, SVM, Softmax，Network".

Every derivation of the note, transcribed AS WRITTEN (the wrong ones too) in the note's layout:
row vectors, one sample (shape (1, n)) where the note uses vectors. A formula whose neighbours in
the same chain are also questionable is isolated: the derivation checks that one formula, with
the others replaced by verified ones, so that each verdict is about one formula. Verdicts and
reasons: README.md in this folder.

    gradaudit audit examples/notes/seed_000_cs231n.py --oracles torch --dtypes float64
"""
import numpy as np

import gradaudit
from gradaudit import const, onehot


def _sig(xp, u):
    return 1 / (1 + xp.exp(-u))


def _np_sig(u):
    return 1 / (1 + np.exp(-u))


def _np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _xp_log_softmax(xp, z):
    s = z - xp.max(z, axis=-1, keepdims=True)
    return s - xp.log(xp.sum(xp.exp(s), axis=-1, keepdims=True))


# ==== § cs231n (tips: the matrix-calculus rules) ===============================================

@gradaudit.derivation(source="seed 000 § cs231n (标量对多个矩阵求导法则)",
                      formula="z = f(Y), Y = AX + B:  ∂z/∂X = Aᵀ ∂z/∂Y,  ∂z/∂A = ∂z/∂A Xᵀ (sic: ∂z/∂Y Xᵀ)")
def matrix_rule(xp, A: ("M", "D"), X: ("D", "N"), B: ("M", "N")):
    return A @ X + B


@matrix_rule.backward
def matrix_rule_backward(dY, A, X, B):
    # the note's right-hand side reads ∂z/∂A Xᵀ, a typo for ∂z/∂Y Xᵀ (it cannot define ∂z/∂A by itself)
    return dY @ X.T, A.T @ dY, dY


@gradaudit.derivation(source="seed 000 § cs231n (向量对向量求导法则)",
                      formula="Z = aW + b:  (∂Z/∂a) = Wᵀ")
def row_affine(xp, a: (1, "N"), *, W: const("N", "M"), b: const(1, "M")):
    return a @ W + b


@row_affine.backward
def row_affine_backward(dZ, a, *, W, b):
    return dZ @ W.T


@gradaudit.derivation(source="seed 000 § cs231n (向量对向量求导法则)",
                      formula="Z = σ(a)W + b:  (∂Z/∂a) = Wᵀ diag(σ'(a))")
def row_sigmoid_affine(xp, a: (1, "N"), *, W: const("N", "M"), b: const(1, "M")):
    return _sig(xp, a) @ W + b


@row_sigmoid_affine.backward
def row_sigmoid_affine_backward(dZ, a, *, W, b):
    s = _np_sig(a)
    return (dZ @ W.T) * (s * (1 - s))  # dZ Wᵀ diag(σ'(a))


# ==== § DNN ======================================================================================
# J = ½‖a^L − y‖², a^L = σ(z^L), z^L = a^{L−1} W^L + b^L, one sample as a row vector.

@gradaudit.derivation(source="seed 000 § DNN (反向传播: 输出层)",
                      formula="∂J/∂W^L = (a^{L−1})ᵀ[(a^L − y) ⊙ σ'(z^L)],  ∂J/∂b^L = (a^L − y) ⊙ σ'(z^L)")
def dnn_output_layer(xp, W: ("K", "M"), b: (1, "M"), *, a_prev: const(1, "K"), y: const(1, "M")):
    o = _sig(xp, a_prev @ W + b) - y
    return xp.sum(o * o) / 2


@dnn_output_layer.backward
def dnn_output_layer_backward(dJ, W, b, *, a_prev, y):
    aL = _np_sig(a_prev @ W + b)
    g = (aL - y) * aL * (1 - aL) * dJ
    return a_prev.T @ g, g


@gradaudit.derivation(source="seed 000 § DNN (反向传播: 输出层, 中间步骤)",
                      formula="∂J/∂W^L = (a^{L−1})ᵀ O diag(σ'(z^L)) = [(a^{L−1})ᵀ O] ⊙ σ'(z^L),  O = a^L − y")
def dnn_output_layer_hadamard(xp, W: ("K", "M"), b: (1, "M"), *, a_prev: const(1, "K"), y: const(1, "M")):
    o = _sig(xp, a_prev @ W + b) - y
    return xp.sum(o * o) / 2


@dnn_output_layer_hadamard.backward
def dnn_output_layer_hadamard_backward(dJ, W, b, *, a_prev, y):
    aL = _np_sig(a_prev @ W + b)
    O, ds = aL - y, aL * (1 - aL)
    dW = (a_prev.T @ O) * ds  # the outer product, then ⊙ σ'(z^L) broadcast over its rows
    return dW * dJ, O * ds * dJ


@gradaudit.derivation(source="seed 000 § DNN (反向传播: ∂J/∂W^L = ∂OOᵀ/∂W^L, ∂OOᵀ/∂O = 2O)",
                      formula="∂J/∂W^L = ∂(OOᵀ)/∂W^L = (a^{L−1})ᵀ ∂(OOᵀ)/∂z^L,  ∂(OOᵀ)/∂O = 2O")
def dnn_output_layer_step(xp, W: ("K", "M"), b: (1, "M"), *, a_prev: const(1, "K"), y: const(1, "M")):
    o = _sig(xp, a_prev @ W + b) - y
    return xp.sum(o * o) / 2


@dnn_output_layer_step.backward
def dnn_output_layer_step_backward(dJ, W, b, *, a_prev, y):
    # the step as written: J replaced by OOᵀ (the ½ dropped), differentiated with ∂(OOᵀ)/∂O = 2O
    aL = _np_sig(a_prev @ W + b)
    dz = 2 * (aL - y) * aL * (1 - aL) * dJ
    return a_prev.T @ dz, dz


@gradaudit.derivation(source="seed 000 § DNN (δ^l 递推)",
                      formula="δ^l = [δ^{l+1} (W^{l+1})ᵀ] ⊙ σ'(z^l),  ∂J/∂W^l = (a^{l−1})ᵀ δ^l,  ∂J/∂b^l = δ^l")
def dnn_delta_recursion(xp, W1: ("D", "H"), b1: (1, "H"), W2: ("H", "K"), b2: (1, "K"), *,
                        x: const(1, "D"), y: const(1, "K")):
    a1 = _sig(xp, x @ W1 + b1)
    o = _sig(xp, a1 @ W2 + b2) - y
    return xp.sum(o * o) / 2


@dnn_delta_recursion.backward
def dnn_delta_recursion_backward(dJ, W1, b1, W2, b2, *, x, y):
    a1 = _np_sig(x @ W1 + b1)
    a2 = _np_sig(a1 @ W2 + b2)
    delta2 = (a2 - y) * a2 * (1 - a2) * dJ  # δ^L
    delta1 = (delta2 @ W2.T) * a1 * (1 - a1)  # δ^l = [δ^{l+1} (W^{l+1})ᵀ] ⊙ σ'(z^l)
    return x.T @ delta1, delta1, a1.T @ delta2, delta2


@gradaudit.derivation(source="seed 000 § DNN (affine_backward code)", formula="affine_backward as in the note")
def affine(xp, x: ("N", "D"), w: ("D", "M"), b: ("M",)):
    return xp.reshape(x, (x.shape[0], -1)) @ w + b


def affine_backward(dout, cache):  # verbatim from the note
    x, w, b = cache
    dx, dw, db = None, None, None

    x_copy = np.reshape(x, (x.shape[0], -1))
    dw = x_copy.T @ dout
    dx = dout @ w.T
    dx = np.reshape(dx, x.shape)
    db = np.sum(dout, axis=0)

    return dx, dw, db


@affine.backward
def affine_backward_from_notes(dout, x, w, b):
    return affine_backward(dout, (x, w, b))


# ==== § Softmax ==================================================================================

@gradaudit.derivation(source="seed 000 § Softmax (反向传播)",
                      formula="J = −ln(softmax(z)) yᵀ:  ∂J/∂z = −y + a")
def softmax_ce(xp, z: (1, "C"), *, y: onehot(1, classes="C")):
    return -xp.sum(_xp_log_softmax(xp, z) * y)


@softmax_ce.backward
def softmax_ce_backward(dJ, z, *, y):
    return (-y + _np_softmax(z)) * dJ


# ==== § RNN ======================================================================================
# h_t = tanh(x_t W_xh + h_{t−1} W_hh + b), z_t = h_t V + c, a_t = softmax(z_t), L = Σ_t CE(a_t, y_t)

def _rnn_forward_np(x, h0, Wxh, Whh, b):
    hs, h = [h0], h0
    for t in range(x.shape[0]):
        h = np.tanh(x[t:t + 1] @ Wxh + h @ Whh + b)
        hs.append(h)
    return hs  # h_0 .. h_T, each (1, H)


def _rnn_loss_xp(xp, x, h0, Wxh, Whh, b, V, c, y):
    h, loss = h0, 0.0
    for t in range(x.shape[0]):
        h = xp.tanh(x[t:t + 1] @ Wxh + h @ Whh + b)
        loss = loss - xp.sum(_xp_log_softmax(xp, h @ V + c) * y[t:t + 1])
    return loss


_SEQ = {"T": (1, 2, 3)}


@gradaudit.derivation(source="seed 000 § RNN (V, c 的梯度; δ_t 的输出项)",
                      formula="∂L/∂c = Σ_t (a_t − y_t),  ∂L/∂V = Σ_t h_tᵀ(a_t − y_t),  ∂L_t/∂h_t = (a_t − y_t)Vᵀ")
def rnn_output_layer(xp, h: ("T", "H"), V: ("H", "C"), c: (1, "C"), *, y: onehot("T", classes="C")):
    return -xp.sum(_xp_log_softmax(xp, h @ V + c) * y)


@rnn_output_layer.backward
def rnn_output_layer_backward(dL, h, V, c, *, y):
    g = (_np_softmax(h @ V + c) - y) * dL  # a_t − y_t, row t
    return g @ V.T, h.T @ g, g.sum(axis=0, keepdims=True)


@gradaudit.derivation(source="seed 000 § RNN (tip: ∂h_t/∂h_{t−1})",
                      formula="∂h_t/∂h_{t−1} = (W_hh)ᵀ diag(1 − h_{t−1}²)")
def rnn_hidden_jacobian(xp, h_prev: (1, "H"), *, x: const(1, "D"), Wxh: const("D", "H", scale=0.5),
                        Whh: const("H", "H", scale=0.5), b: const(1, "H", scale=0.5)):
    return xp.tanh(x @ Wxh + h_prev @ Whh + b)


@rnn_hidden_jacobian.backward
def rnn_hidden_jacobian_backward(dh, h_prev, *, x, Wxh, Whh, b):
    return (dh @ Whh.T) * (1 - h_prev ** 2)  # δ (W_hh)ᵀ diag(1 − h_{t−1}²), as written


@gradaudit.derivation(source="seed 000 § RNN (δ_t 递推)", sizes=_SEQ,
                      formula="δ_t = (a_t − y_t)Vᵀ + δ_{t+1}(W_hh)ᵀ diag(1 − h_t²),  δ_T = (a_T − y_T)Vᵀ")
def rnn_delta_recursion(xp, x: ("T", "D"), h0: (1, "H"), Wxh: ("D", "H"), Whh: ("H", "H"), b: (1, "H"), *,
                        V: const("H", "C"), c: const(1, "C"), y: onehot("T", classes="C")):
    return _rnn_loss_xp(xp, x, h0, Wxh * 0.5, Whh * 0.5, b * 0.5, V, c, y)


@rnn_delta_recursion.backward
def rnn_delta_recursion_backward(dL, x, h0, Wxh, Whh, b, *, V, c, y):
    # the note's δ recursion; everything downstream of δ is the verified local rule
    Wxh_, Whh_, b_ = Wxh * 0.5, Whh * 0.5, b * 0.5
    hs = _rnn_forward_np(x, h0, Wxh_, Whh_, b_)
    T = x.shape[0]
    out = [(_np_softmax(hs[t] @ V + c) - y[t - 1:t]) * dL for t in range(1, T + 1)]  # a_t − y_t
    deltas = [None] * (T + 1)
    deltas[T] = out[T - 1] @ V.T  # δ_T = (a_T − y_T)Vᵀ
    for t in range(T - 1, -1, -1):
        own = out[t - 1] @ V.T if t >= 1 else 0.0
        deltas[t] = own + (deltas[t + 1] @ Whh_.T) * (1 - hs[t] ** 2)  # as written
    dx, dWxh, dWhh, db = np.zeros_like(x), np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(b)
    for t in range(1, T + 1):
        do = deltas[t] * (1 - hs[t] ** 2)  # ∂L/∂o_t = δ_t ⊙ (1 − h_t²)
        dx[t - 1:t] = do @ Wxh_.T
        dWxh += x[t - 1:t].T @ do * 0.5
        dWhh += hs[t - 1].T @ do * 0.5
        db += do * 0.5
    return dx, deltas[0], dWxh, dWhh, db


@gradaudit.derivation(source="seed 000 § RNN (W_hh, W_xh, b 的梯度)", sizes=_SEQ,
                      formula="∂L/∂W_hh = (h_{t−1})ᵀ[δ_t ⊙ (1 − o_t²)],  ∂L/∂W_xh = (x_t)ᵀ[δ_t ⊙ (1 − o_t²)],  "
                              "∂L/∂b = δ_t ⊙ (1 − o_t²)  (summed over t)")
def rnn_weight_grads(xp, Wxh: ("D", "H"), Whh: ("H", "H"), b: (1, "H"), *, x: const("T", "D"),
                     h0: const(1, "H", scale=0.5), V: const("H", "C"), c: const(1, "C"),
                     y: onehot("T", classes="C")):
    return _rnn_loss_xp(xp, x, h0, Wxh * 0.5, Whh * 0.5, b * 0.5, V, c, y)


@rnn_weight_grads.backward
def rnn_weight_grads_backward(dL, Wxh, Whh, b, *, x, h0, V, c, y):
    # a verified δ_t (∂L/∂h_t), then the note's weight formulas with 1 − o_t², o_t the pre-activation
    Wxh_, Whh_, b_ = Wxh * 0.5, Whh * 0.5, b * 0.5
    hs = _rnn_forward_np(x, h0, Wxh_, Whh_, b_)
    T = x.shape[0]
    os_ = [None] + [x[t - 1:t] @ Wxh_ + hs[t - 1] @ Whh_ + b_ for t in range(1, T + 1)]
    dWxh, dWhh, db = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(b)
    carry = np.zeros_like(h0)
    for t in range(T, 0, -1):
        delta = (_np_softmax(hs[t] @ V + c) - y[t - 1:t]) * dL @ V.T + carry  # ∂L/∂h_t, verified
        carry = (delta * (1 - hs[t] ** 2)) @ Whh_.T
        g = delta * (1 - os_[t] ** 2)  # as written: 1 − o_t²
        dWhh += hs[t - 1].T @ g * 0.5
        dWxh += x[t - 1:t].T @ g * 0.5
        db += g * 0.5
    return dWxh, dWhh, db


@gradaudit.derivation(source="seed 000 § RNN (rnn_step_backward code)", formula="rnn_step_backward as in the note")
def rnn_step(xp, x: ("N", "D"), prev_h: ("N", "H"), Wx: ("D", "H"), Wh: ("H", "H"), b: ("H",)):
    return xp.tanh(x @ Wx + prev_h @ Wh + b)


def rnn_step_backward(dnext_h, cache):  # verbatim from the note

    dx, dprev_h, dWx, dWh, db = None, None, None, None, None

    x, Wx, Wh, prev_h, next_h, b = cache
    # dO = dnext_h * (1 - next_h ** 2)
    # prev_h 为 h_{t-1}, next_h = h_t
    dWh = prev_h.T @ (dnext_h * (1 - next_h ** 2))
    dWx = x.T @ (dnext_h * (1 - next_h ** 2))
    db = np.sum(dnext_h * (1 - next_h ** 2), axis=0)
    dx = (dnext_h * (1 - next_h ** 2)) @ Wh.T

    return dx, dprev_h, dWx, dWh, db


@rnn_step.backward
def rnn_step_backward_from_notes(dnext_h, x, prev_h, Wx, Wh, b, *, out):
    return rnn_step_backward(dnext_h, (x, Wx, Wh, prev_h, out, b))


@gradaudit.derivation(source="seed 000 § RNN (rnn_step_backward code: dWx, dWh, db)",
                      formula="dWh = prev_hᵀ(dnext_h ⊙ (1 − next_h²)), dWx = xᵀ(…), db = Σ(…)")
def rnn_step_weights(xp, Wx: ("D", "H"), Wh: ("H", "H"), b: ("H",), *, x: const("N", "D"), prev_h: const("N", "H")):
    return xp.tanh(x @ Wx + prev_h @ Wh + b)


@rnn_step_weights.backward
def rnn_step_weights_from_notes(dnext_h, Wx, Wh, b, *, x, prev_h, out):
    _, _, dWx, dWh, db = rnn_step_backward(dnext_h, (x, Wx, Wh, prev_h, out, b))
    return dWx, dWh, db


# ==== § LSTM =====================================================================================
# f = σ(h W_f + x U_f + b_f), i = σ(…_i), a = tanh(…_a), o = σ(…_o)   (gate k = 0, 1, 2, 3: f, i, a, o)
# C^{t+1} = C^t ⊙ f + i ⊙ a,  h^{t+1} = o ⊙ tanh(C^{t+1});  weights packed: Wh (H, 4, H), Ux (D, 4, H), bg (4, H)

_W = dict(Wh=const("H", 4, "H", scale=0.5), Ux=const("D", 4, "H", scale=0.5), bg=const(4, "H", scale=0.5))


def _gates_xp(xp, h, x, Wh, Ux, bg):
    pre = [h @ Wh[:, k, :] + x @ Ux[:, k, :] + bg[k:k + 1, :] for k in range(4)]
    return _sig(xp, pre[0]), _sig(xp, pre[1]), xp.tanh(pre[2]), _sig(xp, pre[3])


def _gates_np(h, x, Wh, Ux, bg):
    pre = [h @ Wh[:, k, :] + x @ Ux[:, k, :] + bg[k:k + 1, :] for k in range(4)]
    return _np_sig(pre[0]), _np_sig(pre[1]), np.tanh(pre[2]), _np_sig(pre[3])


def _lstm_step_xp(xp, h, C, x, Wh, Ux, bg):
    f, i, a, o = _gates_xp(xp, h, x, Wh, Ux, bg)
    C_next = C * f + i * a
    return o * xp.tanh(C_next), C_next


def _dh_through_gates(delta, h, C, x, Wh, Ux, bg, *, o_prev, as_written=()):
    """δ^{t+1} ∂h^{t+1}/∂h^t through the four gates, each factor verified unless named in `as_written`."""
    f, i, a, o = _gates_np(h, x, Wh, Ux, bg)
    C_next = C * f + i * a
    tc = np.tanh(C_next)
    dh_dC = (o_prev if "dC" in as_written else o) * (1 - tc ** 2)  # diag(o^t ⊙ tanh'(C^{t+1})) as written
    v_f = C * f * (f * (1 - f)) if "f" in as_written else C * (f * (1 - f))
    v_a = a * i * (1 - a ** 2) if "a" in as_written else i * (1 - a ** 2)
    v_i = a * i * (i * (1 - i)) if "i" in as_written else a * (i * (1 - i))
    v_o = o * tc * (o * (1 - o)) if "o" in as_written else tc * (o * (1 - o))
    g = delta * dh_dC
    return ((g * v_f) @ Wh[:, 0, :].T + (g * v_i) @ Wh[:, 1, :].T + (g * v_a) @ Wh[:, 2, :].T
            + (delta * v_o) @ Wh[:, 3, :].T)


def _gate_derivation(name, formula, as_written):
    def forward(xp, h: (1, "H"), *, C: const(1, "H"), x: const(1, "D"), o_prev: const(1, "H", low=0.05, high=0.95),
                Wh=_W["Wh"], Ux=_W["Ux"], bg=_W["bg"]):
        return _lstm_step_xp(xp, h, C, x, Wh, Ux, bg)[0]

    forward.__name__ = forward.__qualname__ = name
    d = gradaudit.derivation(forward, source="seed 000 § LSTM (δ_h^t: ∂h^{t+1}/∂h^t)", formula=formula)

    def backward(delta, h, *, C, x, o_prev, Wh, Ux, bg):
        return _dh_through_gates(delta, h, C, x, Wh, Ux, bg, o_prev=o_prev, as_written=as_written)

    backward.__name__ = backward.__qualname__ = f"{name}_backward"
    d.backward(backward)
    return d


lstm_dh_through_gates = _gate_derivation(
    "lstm_dh_through_gates",
    "δ^{t+1} ∂h^{t+1}/∂C^{t+1}[diag(C^t⊙f^{t+1}⊙σ')W_fᵀ + diag(a^{t+1}⊙i^{t+1}⊙tanh')W_aᵀ + diag(a^{t+1}⊙i^{t+1}⊙σ')W_iᵀ]"
    " + δ^{t+1} diag(o^{t+1}⊙tanh(C^{t+1})⊙σ')W_oᵀ,  ∂h^{t+1}/∂C^{t+1} = diag(o^t ⊙ tanh'(C^{t+1}))",
    ("dC", "f", "a", "i", "o"))
lstm_dh_dC_factor = _gate_derivation(
    "lstm_dh_dC_factor", "∂h^{t+1}/∂C^{t+1} = diag(o^t ⊙ tanh'(C^{t+1}))", ("dC",))
lstm_dh_forget_term = _gate_derivation(
    "lstm_dh_forget_term", "∂C^{t+1}/∂f^{t+1} ∂f^{t+1}/∂h^t = diag(C^t ⊙ f^{t+1} ⊙ σ') W_fᵀ", ("f",))
lstm_dh_candidate_term = _gate_derivation(
    "lstm_dh_candidate_term", "∂C^{t+1}/∂a^{t+1} ∂a^{t+1}/∂h^t = diag(a^{t+1} ⊙ i^{t+1} ⊙ tanh') W_aᵀ", ("a",))
lstm_dh_input_term = _gate_derivation(
    "lstm_dh_input_term", "∂C^{t+1}/∂i^{t+1} ∂i^{t+1}/∂h^t = diag(a^{t+1} ⊙ i^{t+1} ⊙ σ') W_iᵀ", ("i",))
lstm_dh_output_term = _gate_derivation(
    "lstm_dh_output_term", "∂h^{t+1}/∂o^{t+1} ∂o^{t+1}/∂h^t = diag(o^{t+1} ⊙ tanh(C^{t+1}) ⊙ σ') W_oᵀ", ("o",))


@gradaudit.derivation(source="seed 000 § LSTM (δ_h^τ)", formula="δ_h^τ = (ŷ^τ − y^τ)Vᵀ,  ŷ = softmax(hV + b)")
def lstm_dh_last(xp, h: (1, "H"), *, V: const("H", "C"), b: const(1, "C"), y: onehot(1, classes="C")):
    return -xp.sum(_xp_log_softmax(xp, h @ V + b) * y)


@lstm_dh_last.backward
def lstm_dh_last_backward(dL, h, *, V, b, y):
    return (_np_softmax(h @ V + b) - y) @ V.T * dL


@gradaudit.derivation(source="seed 000 § LSTM (δ_C^τ)",
                      formula="δ_C^τ = δ_h^τ ⊙ o^τ ⊙ (1 − tanh²(C^τ))")
def lstm_dC_last(xp, C: (1, "H"), *, o: const(1, "H", low=0.05, high=0.95)):
    return o * xp.tanh(C)


@lstm_dC_last.backward
def lstm_dC_last_backward(dh, C, *, o):
    return dh * o * (1 - np.tanh(C) ** 2)


@gradaudit.derivation(source="seed 000 § LSTM (δ_C^t 递推)",
                      formula="δ_C^t = δ_C^{t+1} ⊙ f^{t+1} + δ_h^t ⊙ o^t ⊙ tanh'(C^t)")
def lstm_dC_recursion(xp, C: (1, "H"), *, o: const(1, "H", low=0.05, high=0.95),
                      f_next: const(1, "H", low=0.05, high=0.95), i_next: const(1, "H", low=0.05, high=0.95),
                      a_next: const(1, "H", low=-0.95, high=0.95)):
    return o * xp.tanh(C), C * f_next + i_next * a_next  # (h^t, C^{t+1})


@lstm_dC_recursion.backward
def lstm_dC_recursion_backward(dh, dC_next, C, *, o, f_next, i_next, a_next):
    return dC_next * f_next + dh * o * (1 - np.tanh(C) ** 2)


@gradaudit.derivation(source="seed 000 § LSTM (∂L/∂W_f)",
                      formula="∂L/∂W_f = Σ_t (h^{t−1})ᵀ[δ_C^t ⊙ C^{t−1} ⊙ σ'],  σ' = f^t(1 − f^t)")
def lstm_dWf(xp, Wf: ("H", "H"), *, h_prev: const(1, "H"), x: const(1, "D"), Uf: const("D", "H", scale=0.5),
             bf: const(1, "H", scale=0.5), C_prev: const(1, "H"), i: const(1, "H", low=0.05, high=0.95),
             a: const(1, "H", low=-0.95, high=0.95)):
    return C_prev * _sig(xp, h_prev @ (Wf * 0.5) + x @ Uf + bf) + i * a


@lstm_dWf.backward
def lstm_dWf_backward(dC, Wf, *, h_prev, x, Uf, bf, C_prev, i, a):
    f = _np_sig(h_prev @ (Wf * 0.5) + x @ Uf + bf)
    return h_prev.T @ (dC * C_prev * f * (1 - f)) * 0.5


def _lstm_seq_loss_xp(xp, h0, x, V, c, y, Wh, Ux, bg):
    h, C, loss = h0, h0 * 0, 0.0
    for t in range(x.shape[0]):
        h, C = _lstm_step_xp(xp, h, C, x[t:t + 1], Wh, Ux, bg)
        loss = loss - xp.sum(_xp_log_softmax(xp, h @ V + c) * y[t:t + 1])
    return loss


@gradaudit.derivation(source="seed 000 § LSTM (δ_h^t 的结构)", sizes=_SEQ,
                      formula="δ_h^t = (ŷ^t − y^t)Vᵀ + δ^{t+1} ∂h^{t+1}/∂h^t  (the cell state's own path, "
                              "δ_C^{t+1}, is not in it)")
def lstm_delta_h_structure(xp, h0: (1, "H"), *, x: const("T", "D"), V: const("H", "C"), c: const(1, "C"),
                           y: onehot("T", classes="C"), Wh=_W["Wh"], Ux=_W["Ux"], bg=_W["bg"]):
    return _lstm_seq_loss_xp(xp, h0, x, V, c, y, Wh, Ux, bg)


@lstm_delta_h_structure.backward
def lstm_delta_h_structure_backward(dL, h0, *, x, V, c, y, Wh, Ux, bg):
    # δ_h^t = own output term + δ_h^{t+1} (∂h^{t+1}/∂h^t, every factor verified), as the note structures it
    T = x.shape[0]
    hs, Cs = [h0], [np.zeros_like(h0)]
    for t in range(T):
        f, i, a, o = _gates_np(hs[-1], x[t:t + 1], Wh, Ux, bg)
        Cs.append(Cs[-1] * f + i * a)
        hs.append(o * np.tanh(Cs[-1]))
    delta = np.zeros_like(h0)
    for t in range(T, 0, -1):
        delta = (_np_softmax(hs[t] @ V + c) - y[t - 1:t]) * dL @ V.T + delta  # δ_h^t
        delta = _dh_through_gates(delta, hs[t - 1], Cs[t - 1], x[t - 1:t], Wh, Ux, bg, o_prev=None)
    return delta  # δ_h^0


@gradaudit.derivation(source="seed 000 § LSTM (tip: softmax 求导)",
                      formula="∂softmax(z)/∂z = diag(e^z)/(e^z 1ᵀ) − (e^z)ᵀe^z/(e^z 1ᵀ)² = diag(a) − aᵀa")
def softmax_jacobian(xp, z: (1, "C")):
    e = xp.exp(z - xp.max(z, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)


@softmax_jacobian.backward
def softmax_jacobian_backward(da, z):
    a = _np_softmax(z)
    return da @ (np.diagflat(a) - a.T @ a)


# ==== § 1、KNN, SVM, Softmax，Network (SoftMax 更新梯度) ===========================================

@gradaudit.derivation(source="seed 000 § 1、KNN, SVM, Softmax，Network (d log SoftMax)",
                      formula="d log SoftMax(a) = da − (d log exp(a) 1) 1ᵀ  ⇒  ∂/∂a = g − softmax(a) Σg")
def log_softmax_differential(xp, a: (1, "K")):
    return _xp_log_softmax(xp, a)


@log_softmax_differential.backward
def log_softmax_differential_backward(g, a):
    return g - _np_softmax(a) * g.sum(axis=-1, keepdims=True)


@gradaudit.derivation(source="seed 000 § 1、KNN, SVM, Softmax，Network (SoftMax 更新梯度)",
                      formula="l = −log(SoftMax(XW)) y:  ∂l/∂a = −yᵀ + SoftMax(a),  ∂l/∂W = Xᵀ(−yᵀ + SoftMax(XW))")
def softmax_dW(xp, W: ("D", "K"), *, X: const(1, "D"), y: onehot(1, classes="K")):
    return -xp.sum(_xp_log_softmax(xp, X @ W) * y)


@softmax_dW.backward
def softmax_dW_backward(dl, W, *, X, y):
    return X.T @ (-y + _np_softmax(X @ W)) * dl
