"""Scalar chain-rule gates of the backprop notes (seed 004 "Patterns in backward flow", seed 002 §3, §6).

Every gate works elementwise on arrays of any one shape S, so a scalar example is just S = ().
"""
import numpy as np

from ._common import _sigmoid

__all__ = [
    "add_gate_forward", "add_gate_backward",
    "multiply_gate_forward", "multiply_gate_backward",
    "max_gate_forward", "max_gate_backward",
    "sigmoid_neuron_forward", "sigmoid_neuron_backward",
    "chain_rule_example_forward", "chain_rule_example_backward",
]


def add_gate_forward(x, y):
    """x, y: (S) -> x + y, (S)."""
    return x + y, None


def add_gate_backward(dout, cache):
    # the add gate routes the upstream gradient unchanged to both inputs (copies: never alias dout)
    return dout.copy(), dout.copy()


def multiply_gate_forward(x, y):
    """x, y: (S) -> x * y, (S)."""
    return x * y, (x, y)


def multiply_gate_backward(dout, cache):
    # the multiply gate "switches": each input's gradient is the other input times dout
    x, y = cache
    return y * dout, x * dout


def max_gate_forward(x, y):
    """x, y: (S) -> elementwise max(x, y), (S)."""
    return np.maximum(x, y), (x, y)


def max_gate_backward(dout, cache):
    # the max gate routes dout to the larger input; at a tie x == y each side gets dout/2
    # (a convex combination, so a valid subgradient; the torch.maximum / lax.max convention)
    x, y = cache
    half = dout / 2
    dx = np.where(x > y, dout, np.where(x == y, half, 0))
    dy = np.where(y > x, dout, np.where(x == y, half, 0))
    return dx, dy


def sigmoid_neuron_forward(w, x):
    """w: (3,), x: (N, 2) -> σ(w0·x[:,0] + w1·x[:,1] + w2), (N,)."""
    z = x @ w[:2] + w[2]
    out = _sigmoid(z)
    return out, (w, x, z, out)


def sigmoid_neuron_backward(dout, cache):
    # dz = dout·σ(z)(1-σ(z)), written σ(z)σ(-z) so it does not cancel to 0 for large z;
    # dw = [Σ x0·dz, Σ x1·dz, Σ dz],  dx[:, k] = w_k·dz
    w, x, z, out = cache
    dz = dout * out * _sigmoid(-z)
    dw = np.concatenate([x.T @ dz, dz.sum(keepdims=True)])
    dx = np.outer(dz, w[:2])
    return dw, dx


def chain_rule_example_forward(x, y, z):
    """x, y, z: (S) -> (x + y) * z, (S)."""
    q = x + y
    return q * z, (q, z)


def chain_rule_example_backward(dout, cache):
    # f = q·z with q = x + y:  df/dx = df/dy = z,  df/dz = q
    q, z = cache
    dq = z * dout
    return dq, dq.copy(), q * dout
