"""Small numerically careful helpers shared by the reference ops (private: not part of the contract)."""
import numpy as np


def _scalar(value, dtype):
    """A hyperparameter (p, reg, eps, ...) as a 0-d array of the input's dtype.

    NumPy 2 treats a Python float as "weak" (float32 array * 0.5 stays float32), but an np.float64
    scalar is not weak and would silently upcast a float32 computation; this makes both safe.
    """
    return np.asarray(value, dtype=dtype)


def _sigmoid(x):
    """σ(x) = 1 / (1 + e^-x) without overflow: with z = e^-|x| ∈ (0, 1],
    σ(x) = 1/(1+z) for x ≥ 0 and z/(1+z) for x < 0."""
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + z), z / (1 + z))


def _log_softmax(x, axis=-1):
    shifted = x - x.max(axis=axis, keepdims=True)  # the shift keeps exp finite for any logits
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
