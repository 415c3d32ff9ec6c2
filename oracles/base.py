"""The one oracle interface.

An oracle takes the forward it differentiates (the caller picks it: the catalogue op written with
the framework's own ops, the user's array-API forward, or a NumPy forward for finite differences),
one case (float64 master arrays + params), the upstream gradients and a dtype/device, and returns
its forward output and its vector-Jacobian product. It never sees the reference's gradients.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["Elsewhere", "OracleResult", "OracleUnavailable", "Projection", "as_tuple", "loaded", "on_load"]

_SETTINGS: dict[str, dict[str, Callable]] = {}  # per framework, per setting: applied when it loads
_LOADED: dict[str, Any] = {}


def on_load(framework: str, setting: str, apply: Callable) -> None:
    """Apply `apply(module)` to `framework` ("torch", "jax") when an oracle first imports it, or now if
    one has. A process that never runs the framework never imports it (an audit's judge, whose
    derivations are differentiated in the audit child, skips seconds of import). A later call for the
    same `setting` replaces one still pending."""
    if framework in _LOADED:
        apply(_LOADED[framework])
    else:
        _SETTINGS.setdefault(framework, {})[setting] = apply


def loaded(framework: str, module) -> None:
    """Called once by the framework's oracle right after its import and its own defaults."""
    _LOADED[framework] = module
    for apply in _SETTINGS.pop(framework, {}).values():
        apply(module)


class OracleUnavailable(Exception):
    """The framework or device cannot be used here; the message is the one-line reason."""


@dataclass
class Projection:
    """Directional derivatives <grad, u_k> for random directions `dirs[k]` (large inputs, numeric oracle)."""

    dirs: np.ndarray  # (k, *shape)
    values: np.ndarray  # (k,)

    @property
    def shape(self):
        return self.dirs.shape[1:]


@dataclass
class OracleResult:
    out: Any  # np.ndarray, or tuple of them for multi-output ops
    grads: dict[str, np.ndarray | Projection]
    info: dict[str, Any] = field(default_factory=dict)


class Elsewhere:
    """A forward that runs in another process (a `@gradaudit.derivation` audited in its child
    process, gradaudit/_remote.py): a framework oracle cannot trace it, so it asks for the forward and
    the VJP where the forward lives; the numeric oracle evaluates it at all its points in one call."""

    def __call__(self, *arrays, **params):
        """The NumPy forward's output at one point."""
        raise NotImplementedError

    def batch(self, points: list, params: dict) -> list:
        """The outputs at each point (a tuple of arrays) with the same params."""
        raise NotImplementedError

    def vjp(self, oracle: str, arrays: dict, params: dict, douts: tuple, *, dtype: str, device: str) -> "OracleResult":
        """`oracle`'s forward output and VJP, computed where the forward lives."""
        raise NotImplementedError


def as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)
