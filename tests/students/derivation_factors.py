"""A new user's derivations, each backward missing the constant of its forward (√d, 1/√(2π), π)."""
import math

import numpy as np

import gradaudit


@gradaudit.derivation
def scaled_scores(xp, q: ("N", "D"), k: ("M", "D")):
    return q @ k.T / math.sqrt(q.shape[1])


@scaled_scores.backward
def scaled_scores_backward(ds, q, k):
    return ds @ k, ds.T @ q  # the 1/√D of the forward is missing


@gradaudit.derivation
def gaussian(xp, x: ("N",)):
    return xp.exp(-x ** 2 / 2) / math.sqrt(2 * math.pi)


@gaussian.backward
def gaussian_backward(dy, x):
    return -x * np.exp(-x ** 2 / 2) * dy  # the normaliser 1/√(2π) is missing


@gradaudit.derivation
def wave(xp, x: ("N", "D")):
    return xp.sin(math.pi * x)


@wave.backward
def wave_backward(dy, x):
    return np.cos(np.pi * x) * dy  # the inner derivative π is missing
