"""Seed 002 (../../../shared/seeds/002_036261a2f7e86842.txt): 链式法则与反向传播算法 — the worked
examples (实例一, 实例四), the layer rules of § 7 and the column-layout layers of § 8.

Transcribed AS WRITTEN. Verdicts and reasons: README.md in this folder.
"""
import numpy as np

import gradaudit


# ==== § 3.实例一 =================================================================================

@gradaudit.derivation(source="seed 002 § 3.实例一",
                      formula="f = (x + y) z, q = x + y:  ∂f/∂x = z·1,  ∂f/∂y = z·1,  ∂f/∂z = q")
def chain_rule_example(xp, x: ("S",), y: ("S",), z: ("S",)):
    return (x + y) * z


@chain_rule_example.backward
def chain_rule_example_backward(df, x, y, z):
    q = x + y
    return z * 1 * df, z * 1 * df, q * df


# ==== § 6.实例四 =================================================================================

@gradaudit.derivation(source="seed 002 § 6.实例四",
                      formula="f = 1/(1 + e^{−(w0x0 + w1x1 + w2)}), staged: d(1/x) = −1/x², d(c + x) = 1, "
                              "d(e^x) = e^x, d(ax) = a")
def sigmoid_neuron(xp, w: (3,), x: (2,)):
    return 1 / (1 + xp.exp(-(w[0] * x[0] + w[1] * x[1] + w[2])))


@sigmoid_neuron.backward
def sigmoid_neuron_backward(df, w, x):
    s = w[0] * x[0] + w[1] * x[1] + w[2]
    e = np.exp(-s)
    q = 1 + e
    dq = -1 / q ** 2 * df  # f = 1/q
    de = 1 * dq  # q = 1 + e
    dneg = e * de  # e = exp(−s)
    ds = -1 * dneg  # −s = (−1)·s
    return np.array([x[0] * ds, x[1] * ds, ds]), np.array([w[0] * ds, w[1] * ds])


# ==== § 7.具体的做法 =============================================================================

@gradaudit.derivation(source="seed 002 § 7.具体的做法",
                      formula="Y = X⊙W + b:  ∂L/∂X = ∂L/∂Y ⊙ Wᵀ,  ∂L/∂W = Xᵀ ⊙ ∂L/∂Y,  ∂L/∂b = 1ᵀ ⊙ ∂L/∂Y  "
                              "(X n×p, W p×m: ⊙ is the matrix product)")
def layer_rows(xp, X: ("n", "p"), W: ("p", "m"), b: (1, "m")):
    return X @ W + b


@layer_rows.backward
def layer_rows_backward(dY, X, W, b):
    return dY @ W.T, X.T @ dY, np.ones((1, dY.shape[0])) @ dY


# ==== § 8.2 / 8.3 / 8.4 (column layout: Y = W X + B) =============================================

@gradaudit.derivation(source="seed 002 § 8.3.举例 (and 8.2, 8.4)",
                      formula="Y = W X + B:  ∂C/∂W = ∂C/∂Y Xᵀ,  ∂C/∂X = Wᵀ ∂C/∂Y,  ∂C/∂B = ∂C/∂Y")
def layer_column(xp, W: ("M", "D"), X: ("D", 1), B: ("M", 1)):
    return W @ X + B


@layer_column.backward
def layer_column_backward(dY, W, X, B):
    return dY @ X.T, W.T @ dY, dY


@gradaudit.derivation(source="seed 002 § 8.2.2 (倒数第二层)",
                      formula="∂C/∂Y_{L−1} = f'_{L−1}(X_{L−1}) × ∂C/∂X_L,  X_L = f_{L−1}(Y_{L−1}), "
                              "Y_{L−1} = W_{L−1} X_{L−1} + B_{L−1}", sizes={"D": (2, 3)})
def layer_activation(xp, W: ("D", "D"), X: ("D", 1), B: ("D", 1)):
    # a square layer, so that the formula type-checks (with X and Y of different sizes it does not)
    return 1 / (1 + xp.exp(-(W @ X + B)))


@layer_activation.backward
def layer_activation_backward(dX_next, W, X, B):
    def fprime(u):
        s = 1 / (1 + np.exp(-u))
        return s * (1 - s)

    dY = fprime(X) * dX_next  # f'(X_{L−1}), as written
    return dY @ X.T, W.T @ dY, dY
