"""Regularisation: L2 weight penalty and inverted dropout with a replayed mask."""
import numpy as np

from ._common import _scalar

__all__ = [
    "l2_regularization_forward", "l2_regularization_backward",
    "dropout_forward", "dropout_backward",
]


def l2_regularization_forward(w, *, reg):
    """w: (S), reg: float -> reg · Σ w², 0-d."""
    reg = _scalar(reg, w.dtype)
    return np.asarray(reg * (w * w).sum(), dtype=w.dtype), (w, reg)


def l2_regularization_backward(dout, cache):
    # d/dw reg·Σw² = 2·reg·w
    w, reg = cache
    return (2 * reg * dout) * w


def dropout_forward(x, *, p, mode, mask):
    """Inverted dropout. x: (S), p: keep probability, mode: "train" | "test", mask: (S) of 0/1.

    train: x * mask / p (the mask is given so that every side replays the same one; never drawn
    here); test: x, unchanged (returned as a copy, never an alias of the caller's array).
    """
    if mode == "train":
        scale = np.asarray(mask, dtype=x.dtype) / _scalar(p, x.dtype)
        return x * scale, (mode, scale)
    if mode == "test":
        return x.copy(), (mode, None)
    raise ValueError(f"dropout mode must be 'train' or 'test', got {mode!r}")


def dropout_backward(dout, cache):
    # train: d(x·m/p)/dx = m/p;  test: identity
    mode, scale = cache
    return dout * scale if mode == "train" else dout.copy()
